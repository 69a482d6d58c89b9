"""VideoClassifier: a video encoder and a linear head for disease classification (normal vs PAH/ASD, wall motion).

The plain supervised baseline next to CardiacNet's reconstruction-based score: clips in, class logits out; evaluation
averages the class probabilities of every clip of a video (``clip_owner``), as EchoNet-Dynamic averages EF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MultilabelAccuracy,
    MultilabelAUROC,
)

from echo_modules.common.backbones import R2Plus1D18
from echo_modules.common.module import EchoModule, PredictionRecord, average_clip_predictions, metric_values

IGNORE = -1  # target value of an unknown label: left out of the loss and the metrics


def classification_metrics(prefix: str, num_classes: int, multilabel: bool) -> MetricCollection:
    """AUROC and accuracy of per-video probabilities (torchmetrics: reduced correctly across DDP ranks)."""
    metrics: dict[str, Metric]
    if multilabel:
        metrics = {
            "auroc": MultilabelAUROC(num_classes, ignore_index=IGNORE),
            "accuracy": MultilabelAccuracy(num_classes, ignore_index=IGNORE),
        }
    elif num_classes == 2:
        metrics = {"auroc": BinaryAUROC(ignore_index=IGNORE), "accuracy": BinaryAccuracy(ignore_index=IGNORE)}
    else:
        metrics = {
            "auroc": MulticlassAUROC(num_classes, ignore_index=IGNORE),
            "accuracy": MulticlassAccuracy(num_classes, ignore_index=IGNORE),
        }
    return MetricCollection(metrics, prefix=prefix)


@dataclass
class ClassPrediction(PredictionRecord):
    """One video's class probabilities (clip-averaged) and its target (-1: unknown)."""

    filename: str
    probabilities: list[float]
    target: int | list[int]

    def row(self) -> dict[str, Any]:
        cells = {f"prob_{i}": f"{p:.5f}" for i, p in enumerate(self.probabilities)}
        return {"FileName": self.filename, **cells, "target": self.target}


class VideoClassifier(EchoModule):
    """Clip classifier: ``encoder`` features -> dropout -> linear head.

    Binary tasks (``num_classes=2``) use one logit and BCE, more classes softmax cross-entropy, ``multilabel`` one
    BCE logit per label (e.g. HMC-QU's 7 wall-motion segments with ``target: wall_motion``). Targets equal to -1 are
    unknown and ignored. Training takes plain batches (``video``, several views allowed) or the paired batches of
    ``paired=True`` data (``normal_video`` / ``abnormal_video``), so it runs on every video DataModule.
    """

    checkpoint_monitor = ("val/auroc", "max")

    def __init__(
        self,
        encoder: nn.Module | None = None,
        num_classes: int = 2,
        target: str = "label",
        multilabel: bool = False,
        dropout: float = 0.0,
        pos_weight: float | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        predictions_csv: str | None = None,
        eval_chunk_size: int | None = 32,
    ) -> None:
        """Args:
        encoder: a video backbone with ``out_features`` (default torchvision R(2+1)D-18, random init).
        num_classes: classes (2 = binary with one logit), or labels when ``multilabel``.
        target: the batch key holding the targets (``label``; ``wall_motion`` for HMC-QU segments).
        dropout: dropout before the linear head.
        pos_weight: BCE weight of positives (binary / multilabel), e.g. #negatives / #positives for imbalance.
        optimizer / scheduler: callables taking the parameters / the optimizer (LightningCLI class_path configs).
        predictions_csv: where ``predict`` writes FileName, probabilities, target (default: the run's log dir).
        eval_chunk_size: clips per forward at validation/test/predict (bounded memory on long videos; null: all).
        """
        super().__init__(optimizer=optimizer, scheduler=scheduler, eval_chunk_size=eval_chunk_size)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.save_hyperparameters()
        self.encoder = encoder if encoder is not None else R2Plus1D18()
        self.binary = num_classes == 2 and not multilabel
        self.multilabel = multilabel
        self.target = target
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.encoder.out_features, 1 if self.binary else num_classes)
        )
        self.pos_weight = pos_weight
        self.predictions_csv = predictions_csv
        self.val_metrics = classification_metrics("val/", num_classes, multilabel)
        self.test_metrics = classification_metrics("test/", num_classes, multilabel)
        self.test_videos = SumMetric()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Logits per clip of ``video`` ``(N, C, T, H, W)``: ``(N,)`` for binary tasks, else ``(N, num_classes)``."""
        logits = self.head(self.encoder(video))
        return logits.squeeze(-1) if self.binary else logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1) if not (self.binary or self.multilabel) else logits.sigmoid()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """BCE / cross-entropy over the known targets (zero when none is known)."""
        if not (self.binary or self.multilabel):
            if (targets == IGNORE).all():
                return logits.sum() * 0.0
            return F.cross_entropy(logits, targets, ignore_index=IGNORE)
        known = targets != IGNORE
        if not known.any():
            return logits.sum() * 0.0
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits[known], targets[known].float(), pos_weight=weight)

    def _training_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``(N, C, T, H, W)`` and their targets from a plain, multi-view or paired batch."""
        if "video" not in batch:  # paired items: one normal and one abnormal clip each
            videos = [batch[f"{group}_video"] for group in ("normal", "abnormal")]
            targets = [batch[f"{group}_{self.target}"] for group in ("normal", "abnormal")]
            return torch.cat(videos), torch.cat(targets).long()
        video, targets = batch["video"], batch[self.target].long()
        if video.ndim == 6:  # (B, V, C, T, H, W): every view is a training clip with the video's target
            views = video.shape[1]
            video = rearrange(video, "b v c t h w -> (b v) c t h w")
            targets = targets.repeat_interleave(views, dim=0)
        return video, targets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        video, targets = self._training_inputs(batch)
        loss = self.loss(self(video), targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(video))
        return loss

    def _video_probabilities(self, batch: dict[str, Any]) -> torch.Tensor:
        """Per-video probabilities: every clip's probabilities (in chunks of ``eval_chunk_size`` clips) averaged over
        the clips of its video."""
        probabilities = self.run_in_chunks(lambda clips: self.probabilities(self(clips)), batch["video"])
        return average_clip_predictions(probabilities, batch["clip_owner"], len(batch[self.target]))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        probabilities = self._video_probabilities(batch)
        self.val_metrics.update(probabilities, batch[self.target].long())
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=len(probabilities))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        probabilities = self._video_probabilities(batch)
        targets = batch[self.target].long()
        self.test_metrics.update(probabilities, targets)
        self.test_videos.update(torch.ones(len(probabilities), device=probabilities.device).sum())
        self.log_dict(self.test_metrics, batch_size=len(probabilities))

    def test_summary(self) -> dict[str, Any] | None:
        videos = int(self.test_videos.compute().item())  # every rank computes: a collective under DDP
        if not videos:
            return None
        return metric_values(self.test_metrics) | {"videos": videos}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[ClassPrediction]:
        probabilities = self._video_probabilities(batch)
        rows = probabilities.reshape(len(batch["filename"]), -1).tolist()
        targets = batch[self.target].long().tolist()
        return [ClassPrediction(*fields) for fields in zip(batch["filename"], rows, targets, strict=True)]
