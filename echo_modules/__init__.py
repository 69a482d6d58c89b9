"""EchoLab methods: LightningModules and the networks, losses and metrics they are made of."""

__version__ = "0.1.0"  # the distribution's version (pyproject.toml reads it from here)

from echo_modules.cardiacnet import CardiacNet
from echo_modules.coreecho import CoReEcho
from echo_modules.ef_regressor import EFRegressor
from echo_modules.video_classifier import VideoClassifier

__all__ = ["__version__", "CardiacNet", "CoReEcho", "EFRegressor", "VideoClassifier"]
