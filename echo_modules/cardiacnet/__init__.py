"""CardiacNet: bidirectional normal <-> abnormal echo video deformation for disease assessment (hyperparameter groups:
``echo_modules.cardiacnet.settings``)."""

from echo_modules.cardiacnet.module import CardiacNet

__all__ = ["CardiacNet"]
