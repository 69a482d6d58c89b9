"""EFRegressor: the EchoNet-Dynamic baseline (a video CNN regressing EF with MSE, multi-clip test averaging)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import SumMetric

from echo_modules.common.backbones import R2Plus1D18
from echo_modules.common.metrics import ef_metrics
from echo_modules.common.module import (
    EchoModule,
    average_clip_predictions,
    gather_lists,
    save_test_summary,
    write_csv,
)
from echo_modules.common.plotting import ef_agreement_figure, log_figure


class EFRegressor(EchoModule):
    """EF regression from a clip: ``encoder`` features -> linear head, MSE loss (Ouyang et al., Nature 2020).

    At evaluation every clip of a video is predicted and the predictions are averaged per video. The training-set
    mean EF is kept in the checkpoint so test reports the constant-mean predictor's MAE next to the model's.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        predictions_csv: str | None = None,
    ) -> None:
        """Args:
        encoder: a video backbone with ``out_features`` (default torchvision R(2+1)D-18, random init).
        optimizer / scheduler: callables taking the parameters / the optimizer (LightningCLI class_path configs).
        predictions_csv: where ``predict`` writes FileName, EF_pred, EF_true (default: the run's log dir).
        """
        super().__init__()
        self.save_hyperparameters()
        self.encoder = encoder if encoder is not None else R2Plus1D18()
        self.head = nn.Linear(self.encoder.out_features, 1)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.predictions_csv = predictions_csv
        self.register_buffer("train_ef_mean", torch.tensor(math.nan))
        self.val_metrics = ef_metrics("val/")
        self.val_videos = SumMetric()  # how many videos the validation metrics saw (exactly the split, also under DDP)
        self.test_metrics = ef_metrics("test/")
        self.test_mean_predictor = ef_metrics("test/mean_predictor_")
        self._collected: list[tuple[str, float, float]] = []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """EF (percent) for each clip of ``video`` ``(N, C, T, H, W)``."""
        return self.head(self.encoder(video)).squeeze(-1)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        mean = getattr(datamodule, "train_ef_mean", math.nan)
        # only on a fresh start: a resumed fit has the buffer from its checkpoint (the loops, and so global_step,
        # are restored only after on_fit_start)
        if math.isnan(self.train_ef_mean.item()) and math.isfinite(mean):
            self.train_ef_mean.fill_(mean)
            with torch.no_grad():  # start at the mean EF, as EchoNet-Dynamic initialises its bias
                self.head.bias.fill_(mean)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        prediction = self(batch["video"])
        loss = F.mse_loss(prediction, batch["ef"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(prediction))
        return loss

    def _video_predictions(self, batch: dict[str, Any]) -> torch.Tensor:
        clips = self(batch["video"])
        return average_clip_predictions(clips, batch["clip_owner"], len(batch["ef"]))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prediction = self._video_predictions(batch)
        self.val_metrics.update(prediction, batch["ef"])
        self.val_videos.update(torch.ones_like(prediction).sum())
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=len(prediction))
        self.log("val/num_videos", self.val_videos, batch_size=len(prediction))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prediction = self._video_predictions(batch)
        self.test_metrics.update(prediction, batch["ef"])
        self.log_dict(self.test_metrics, batch_size=len(prediction))
        if math.isfinite(self.train_ef_mean.item()):
            constant = torch.full_like(prediction, self.train_ef_mean.item())
            self.test_mean_predictor.update(constant, batch["ef"])
            self.log_dict(self.test_mean_predictor, batch_size=len(prediction))
        self._collected += zip(batch["filename"], prediction.tolist(), batch["ef"].tolist())

    def on_test_epoch_start(self) -> None:
        self._collected = []

    def on_test_epoch_end(self) -> None:
        rows = gather_lists(self._collected)
        predicted = np.array([r[1] for r in rows])
        true = np.array([r[2] for r in rows])
        if self.trainer.is_global_zero and len(rows) > 1:
            log_figure(self, "test/ef_agreement", ef_agreement_figure(predicted, true, "EFRegressor test"))
            mae = float(np.abs(predicted - true).mean())
            baseline = float(np.abs(self.train_ef_mean.item() - true).mean())
            summary = {"test_mae": mae, "mean_predictor_mae": baseline, "ratio": mae / baseline, "videos": len(rows)}
            rank_zero_info(
                f"Test EF MAE {mae:.2f} over {len(rows)} videos; always predicting the training mean "
                f"({self.train_ef_mean.item():.1f}%) gives {baseline:.2f} (ratio {mae / baseline:.2f})"
            )
            save_test_summary(self.run_dir, summary)

    def on_predict_epoch_start(self) -> None:
        self._collected = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        prediction = self._video_predictions(batch)
        self._collected += zip(batch["filename"], prediction.tolist(), batch["ef"].tolist())
        return prediction

    def on_predict_epoch_end(self) -> None:
        rows = gather_lists(self._collected)
        if not self.trainer.is_global_zero:
            return
        table = [
            [name, f"{predicted:.3f}", "" if math.isnan(true) else f"{true:.3f}"]
            for name, predicted, true in sorted(rows)
        ]
        path = self.predictions_csv or self.run_dir / "predictions.csv"
        path = write_csv(path, ["FileName", "EF_pred", "EF_true"], table)
        rank_zero_info(f"Wrote {len(rows)} EF predictions to {path}")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}
