"""Shared metrics (torchmetrics, so they are reduced correctly across DDP ranks): EF regression, and the decision
threshold of a binary score calibrated for balanced accuracy."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection, R2Score
from torchmetrics.utilities import dim_zero_cat


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


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The threshold on ``scores`` with the best balanced accuracy for binary ``labels`` (a midpoint between
    consecutive distinct scores); None when a class is missing."""
    if labels.min() == labels.max():
        return None
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    positives, negatives = labels == 1, labels == 0
    balanced = [0.5 * ((scores[positives] > c).mean() + (scores[negatives] <= c).mean()) for c in candidates]
    return float(candidates[int(np.argmax(balanced))])


class BalancedThreshold(Metric):
    """:func:`best_threshold` over every (score, label) pair updated on any rank: the decision threshold of a binary
    score (higher = positive), calibrated on validation. NaN when nothing was updated or a class is missing."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(scores.detach().flatten().float())
        self.labels.append(labels.detach().flatten().long())

    def compute(self) -> torch.Tensor:
        scores, labels = dim_zero_cat(self.scores), dim_zero_cat(self.labels)
        threshold = None
        if len(scores):
            threshold = best_threshold(scores.double().cpu().numpy(), labels.cpu().numpy())
        return torch.tensor(math.nan if threshold is None else threshold, dtype=torch.float64)
