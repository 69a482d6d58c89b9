"""The shared part of EF-regression methods: EF-mean seeding, multi-clip validation/test/predict, the mean-predictor
control and the test summary, all from torchmetrics. A method (EFRegressor, CoReEcho) supplies ``clip_outputs``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics import SumMetric

from echo_modules.common.metrics import ef_metrics
from echo_modules.common.module import (
    EchoModule,
    PredictionRecord,
    average_clip_predictions,
    gather_lists,
    metric_values,
    number_text,
)
from echo_modules.common.plotting import ef_agreement_figure, log_figure


@dataclass
class EFPrediction(PredictionRecord):
    """One video's EF prediction: the mean over its clips, their spread and count, and the label (NaN: unknown)."""

    filename: str
    ef_pred: float
    ef_true: float
    ef_clip_std: float = math.nan
    num_clips: int = 0
    embedding: np.ndarray | None = None  # the mean clip embedding (test only; not written)

    def row(self) -> dict[str, Any]:
        return {
            "FileName": self.filename,
            "EF_pred": number_text(self.ef_pred),
            "EF_clip_std": number_text(self.ef_clip_std),
            "num_clips": self.num_clips,
            "EF_true": number_text(self.ef_true),
        }


class EFModule(EchoModule):
    """Base of EF regressors. A subclass builds its networks, defines ``training_step`` and
    ``clip_outputs(video) -> {"ef": (N,), ["embedding": (N, F)]}``, and may override :meth:`seed_ef_output` (put
    the training-set mean EF into the output bias) and :meth:`on_fresh_fit`.

    Evaluation runs every clip of a video (in chunks of ``eval_chunk_size``) and averages per video. The training mean
    EF is a buffer (kept in checkpoints), so test reports the constant-mean predictor next to the model.
    """

    checkpoint_monitor = ("val/mae", "min")

    def __init__(self, predictions_csv: str | None = None, **base: Any) -> None:
        super().__init__(**base)
        self.predictions_csv = predictions_csv
        self.register_buffer("train_ef_mean", torch.tensor(math.nan))
        self.val_metrics = ef_metrics("val/")
        self.val_videos = SumMetric()  # how many videos the validation metrics saw (exactly the split, also under DDP)
        self.test_metrics = ef_metrics("test/")
        self.test_mean_predictor = ef_metrics("test/mean_predictor_")
        self.test_videos = SumMetric()
        self._test_records: list[EFPrediction] = []

    # ------------------------------------------------------------------ hooks for the method

    def clip_outputs(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-clip outputs of clips ``(N, C, T, H, W)``: ``ef`` ``(N,)`` and optionally ``embedding`` ``(N, F)``."""
        raise NotImplementedError

    def seed_ef_output(self, mean: float) -> None:
        """Start the output at the training mean EF (EchoNet-Dynamic initialises its bias so)."""

    def on_fresh_fit(self, mean: float) -> None:
        """A fit that does not resume: the training mean is known (NaN when the DataModule has no EF)."""
        if math.isfinite(mean):
            with torch.no_grad():
                self.seed_ef_output(mean)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        mean = float(getattr(datamodule, "train_ef_mean", math.nan))
        # only on a fresh start: a resumed fit has the buffer from its checkpoint (the loops, and so global_step,
        # are restored only after on_fit_start)
        if math.isnan(self.train_ef_mean.item()):
            if math.isfinite(mean):
                self.train_ef_mean.fill_(mean)
            self.on_fresh_fit(mean)

    # ------------------------------------------------------------------ evaluation

    def video_outputs(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-clip outputs (chunked) and their per-video means (``clip_owner`` says which clip is whose)."""
        clips = self.run_in_chunks(self.clip_outputs, batch["video"])
        clips = {key: value.float() for key, value in clips.items()}
        videos = len(batch["filename"])
        means = {key: average_clip_predictions(value, batch["clip_owner"], videos) for key, value in clips.items()}
        return clips, means

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, videos = self.video_outputs(batch)
        prediction = videos["ef"]
        self.val_metrics.update(prediction, batch["ef"])
        self.val_videos.update(torch.ones_like(prediction).sum())
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=len(prediction))
        self.log("val/num_videos", self.val_videos, batch_size=len(prediction))

    def on_test_epoch_start(self) -> None:
        self._test_records = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        clips, videos = self.video_outputs(batch)
        prediction = videos["ef"]
        self.test_metrics.update(prediction, batch["ef"])
        self.test_videos.update(torch.ones_like(prediction).sum())
        self.log_dict(self.test_metrics, batch_size=len(prediction))
        if math.isfinite(self.train_ef_mean.item()):
            constant = torch.full_like(prediction, self.train_ef_mean.item())
            self.test_mean_predictor.update(constant, batch["ef"])
            self.log_dict(self.test_mean_predictor, batch_size=len(prediction))
        self._test_records += self.records(batch, clips, videos)

    def records(
        self, batch: dict[str, Any], clips: dict[str, torch.Tensor], videos: dict[str, torch.Tensor]
    ) -> list[EFPrediction]:
        """One :class:`EFPrediction` per video of the batch."""
        owner, count = batch["clip_owner"], len(batch["filename"])
        deviations = clips["ef"] - videos["ef"][owner]
        spread = average_clip_predictions(deviations.square(), owner, count).sqrt()  # population std over clips
        clip_counts = torch.bincount(owner, minlength=count).tolist()
        embeddings = videos["embedding"].cpu().numpy().astype(np.float32) if "embedding" in videos else [None] * count
        return [
            EFPrediction(name, predicted, true, std, clips_of_video, embedding)
            for name, predicted, true, std, clips_of_video, embedding in zip(
                batch["filename"], videos["ef"].tolist(), batch["ef"].tolist(), spread.tolist(), clip_counts, embeddings
            )
        ]

    def test_summary(self) -> dict[str, Any] | None:
        """The test metrics (torchmetrics, reduced over ranks), the mean predictor's and their MAE ratio; plus the
        EF agreement figure from the gathered per-video predictions."""
        records = gather_lists(self._test_records)
        self._test_records = []
        videos = int(self.test_videos.compute().item())  # every rank computes: a collective under DDP
        if videos < 2:
            return None
        summary: dict[str, Any] = metric_values(self.test_metrics, "test_")
        if math.isfinite(self.train_ef_mean.item()):  # the same on every rank (a buffer)
            summary |= metric_values(self.test_mean_predictor, "")
            summary["ratio"] = summary["test_mae"] / summary["mean_predictor_mae"]
        summary["videos"] = videos
        summary |= self.extra_summary(records)
        if self.trainer.is_global_zero:
            predicted = np.array([r.ef_pred for r in records])
            true = np.array([r.ef_true for r in records])
            log_figure(self, "test/ef_agreement", ef_agreement_figure(predicted, true, f"{type(self).__name__} test"))
        return summary

    def extra_summary(self, records: list[EFPrediction]) -> dict[str, Any]:
        """More summary entries from the gathered per-video records (called on every rank)."""
        return {}

    def summary_line(self, summary: dict[str, Any]) -> str:
        line = f"Test EF MAE {summary['test_mae']:.2f} over {summary['videos']} videos"
        if "ratio" in summary:
            line += (
                f"; always predicting the training mean ({self.train_ef_mean.item():.1f}%) gives "
                f"{summary['mean_predictor_mae']:.2f} (ratio {summary['ratio']:.2f})"
            )
        return line

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[EFPrediction]:
        clips, videos = self.video_outputs(batch)
        videos.pop("embedding", None)
        return self.records(batch, clips, videos)
