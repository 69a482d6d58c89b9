"""CardiacNet: bidirectional normal <-> abnormal echo video deformation for disease assessment."""

from echo_modules.cardiacnet.module import CardiacNet

__all__ = ["CardiacNet"]
