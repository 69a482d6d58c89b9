"""EchoLab methods: LightningModules and the networks, losses and metrics they are made of."""

from echo_modules.ef_regressor import EFRegressor

__all__ = ["EFRegressor"]
