"""EF regression metrics (torchmetrics, so they are reduced correctly across DDP ranks)."""

from __future__ import annotations

from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score


def ef_metrics(prefix: str) -> MetricCollection:
    """MAE, RMSE and R2 of per-video EF predictions (percent points)."""
    return MetricCollection(
        {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False), "r2": R2Score()}, prefix=prefix
    )
