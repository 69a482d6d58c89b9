"""EFRegressor: the EchoNet-Dynamic baseline (a video CNN regressing EF with MSE, multi-clip test averaging)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from echo_modules.common.backbones import R2Plus1D18
from echo_modules.common.ef import EFModule


class EFRegressor(EFModule):
    """EF regression from a clip: ``encoder`` features -> linear head, MSE loss (Ouyang et al., Nature 2020).

    Evaluation (validation, test, predict: :class:`~echo_modules.common.ef.EFModule`) predicts every clip of a video
    and averages per video; test reports the constant training-mean predictor's MAE next to the model's.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        predictions_csv: str | None = None,
        eval_chunk_size: int | None = 32,
    ) -> None:
        """Args:
        encoder: a video backbone with ``out_features`` (default torchvision R(2+1)D-18, random init).
        optimizer / scheduler: callables taking the parameters / the optimizer (LightningCLI class_path configs).
        predictions_csv: where ``predict`` writes FileName, EF_pred, EF_clip_std, num_clips, EF_true (default: the
            run's log dir).
        eval_chunk_size: clips per forward at validation/test/predict (bounded memory on long videos; null: all).
        """
        super().__init__(
            predictions_csv=predictions_csv, optimizer=optimizer, scheduler=scheduler, eval_chunk_size=eval_chunk_size
        )
        self.save_hyperparameters()
        self.encoder = encoder if encoder is not None else R2Plus1D18()
        self.head = nn.Linear(self.encoder.out_features, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """EF (percent) for each clip of ``video`` ``(N, C, T, H, W)``."""
        return self.head(self.encoder(video)).squeeze(-1)

    def clip_outputs(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ef": self(video)}

    def seed_ef_output(self, mean: float) -> None:
        self.head.bias.fill_(mean)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        prediction = self(batch["video"])
        loss = F.mse_loss(prediction, batch["ef"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(prediction))
        return loss
