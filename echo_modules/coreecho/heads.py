"""The small heads CoReEcho puts on a video encoder's pooled features."""

from __future__ import annotations

from torch import nn


class RegressionHead(nn.Sequential):
    """CoReEcho's light EF regressor: BN1d - Dropout - Linear - BN1d - GELU - Dropout - Linear -> one value.

    The output bias starts at ``initial_value`` (the training mean EF, 55.6 on EchoNet-Dynamic) so the first L1 steps
    learn the residual rather than the offset.
    """

    def __init__(self, in_features: int, dropout: float = 0.4, initial_value: float = 55.6) -> None:
        super().__init__(
            nn.BatchNorm1d(in_features),
            nn.Dropout(dropout),
            nn.Linear(in_features, in_features),
            nn.BatchNorm1d(in_features),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(in_features, 1),
        )
        self.reset_output(initial_value)

    @property
    def output(self) -> nn.Linear:
        return self[-1]

    def reset_output(self, value: float) -> None:
        """Set the output bias (the prediction for an average input)."""
        nn.init.constant_(self.output.bias, value)


class ProjectionHead(nn.Sequential):
    """Optional MLP (Linear - BN1d - ReLU - Linear) mapping encoder features to the space the contrastive loss sees.

    CoReEcho applies its loss to the encoder's pooled features directly (no projection); this is for experiments
    with a SimCLR-style projection, the regressor still reading the encoder features.
    """

    def __init__(self, in_features: int, out_features: int, hidden_features: int | None = None) -> None:
        hidden = hidden_features or in_features
        super().__init__(
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_features),
        )
