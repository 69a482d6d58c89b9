"""CardiacNet: bidirectional normal <-> abnormal echo video deformation for disease assessment."""

from echo_modules.cardiacnet.module import CardiacNet
from echo_modules.cardiacnet.settings import (
    CodebookSettings,
    DiscriminatorSettings,
    EvaluationSettings,
    HeadSettings,
    LossWeights,
    MemoryBankSettings,
)

__all__ = [
    "CardiacNet",
    "CodebookSettings",
    "DiscriminatorSettings",
    "EvaluationSettings",
    "HeadSettings",
    "LossWeights",
    "MemoryBankSettings",
]
