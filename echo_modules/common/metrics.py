"""EF regression metrics (torchmetrics, so they are reduced correctly across DDP ranks)."""

from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score


class DefinedR2Score(R2Score):
    """R2 that is NaN, not an exception, on fewer than two videos (a one-video test split, a single-video predict
    folder): torchmetrics raises there, which would end ``echolab test`` with a traceback after all the work."""

    def compute(self) -> torch.Tensor:
        if int(self.total) < 2:
            return torch.tensor(float("nan"), device=self.total.device)
        return super().compute()


def ef_metrics(prefix: str) -> MetricCollection:
    """MAE, RMSE and R2 of per-video EF predictions (percent points)."""
    return MetricCollection(
        {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False), "r2": DefinedR2Score()}, prefix=prefix
    )
