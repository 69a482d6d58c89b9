"""``Segmenter2D``: LV cavity / myocardium / left atrium segmentation of echo frames, the model the VAE corrects.

Loss = ce_weight * cross-entropy + dice_weight * (1 - soft Dice over the structures). Validation and test report
torchmetrics Dice and Hausdorff distance per structure (pixels; test also in mm, from each frame's spacing).
``predict`` segments whole sequences frame by frame (batched, ``predict_chunk`` frames at a time) and returns one :class:`SequencePrediction` per sequence; the module
base's ``PredictionWriter`` writes each as ``<patient>/<patient>_<view>_half_sequence_gt.nii.gz`` with its Info cfg
copied, i.e. a CAMUS-layout folder that the anatomical post-processing and the clinical indices read like ground
truth, and lists them in ``<run dir>/predictions.csv``. The optimiser is the module base's (``optimizer`` /
``scheduler``; default AdamW at ``lr`` / ``weight_decay``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.functional.segmentation import dice_score, hausdorff_distance

from echo_modules.anatomical_vae.losses import soft_dice_loss
from echo_modules.anatomical_vae.mask_io import write_masks
from echo_modules.common.module import EchoModule, PredictionRecord
from echo_modules.segmentation.networks import UNet2D

STRUCTURES = ("lv", "myo", "la")


@dataclass
class SequencePrediction(PredictionRecord):
    """One segmented sequence: its mask file (written by the base's ``PredictionWriter``) and a CSV row."""

    filename: str  # the sequence name, e.g. patient0001_4CH
    patient: str
    frames: int
    mask_file: str
    labels: np.ndarray | None = field(default=None, repr=False)  # (T, H, W) uint8; dropped once written
    spacing: tuple[float, ...] | None = None
    info_cfg: Path | None = None  # the source Info_<view>.cfg, copied next to the masks

    def row(self) -> dict[str, Any]:
        return {"FileName": self.filename, "patient": self.patient, "frames": self.frames, "mask_file": self.mask_file}

    def write_files(self, module: Any) -> None:
        if self.labels is None:
            return
        path = Path(self.mask_file)
        write_masks(path, self.labels, self.spacing)
        if self.info_cfg is not None:
            shutil.copy(self.info_cfg, path.parent / self.info_cfg.name)
        self.labels = None


class Segmenter2D(EchoModule):
    def __init__(
        self,
        network: nn.Module | None = None,
        num_classes: int = 4,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        lr: float = 1.0e-3,
        weight_decay: float = 1.0e-4,
        predict_chunk: int = 64,
        predictions_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """network: any ``(B, C, H, W) -> (B, num_classes, H, W)`` module (default ``UNet2D(1, 4, 32, 5)``).
        lr / weight_decay: AdamW's, when no ``optimizer`` is given.
        predictions_dir: where ``predict`` writes masks (default ``<trainer.default_root_dir>/predictions``).
        optimizer / scheduler: LightningCLI callables for the module base's ``configure_optimizers``."""
        default = partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay)
        super().__init__(optimizer=optimizer or default, scheduler=scheduler)
        self.save_hyperparameters()  # the given optimizer (None: AdamW at lr / weight_decay), not the partial
        self.network = network if network is not None else UNet2D(1, num_classes, 32, 5)
        self._scores: dict[str, list[torch.Tensor]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def _loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, masks)
        return self.hparams.ce_weight * ce + self.hparams.dice_weight * soft_dice_loss(logits, masks)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch["image"]), batch["mask"].long())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["mask"]))
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        masks = batch["mask"].long()
        logits = self(batch["image"])
        self.log(f"{stage}/loss", self._loss(logits, masks), batch_size=len(masks), sync_dist=True)
        predicted = logits.argmax(dim=1)
        kwargs = dict(num_classes=self.hparams.num_classes, include_background=False, input_format="index")
        dice = dice_score(predicted, masks, average="none", **kwargs)  # (B, 3)
        hausdorff = hausdorff_distance(predicted, masks, **kwargs)
        scores = [("dice", dice), ("hausdorff", hausdorff)]
        if stage == "test" and "spacing" in batch:  # each frame's own (row, col) mm (CAMUS depths differ per
            # patient); at test only: a Hausdorff call costs as much as the rest of a validation step
            spacing = batch["spacing"].cpu().double()
            hausdorff_mm = torch.empty_like(hausdorff, dtype=torch.float32)
            for value in torch.unique(spacing, dim=0):  # one call per spacing (a sequence's frames share one)
                rows = (spacing == value).all(dim=1).to(predicted.device)
                hausdorff_mm[rows] = hausdorff_distance(predicted[rows], masks[rows], spacing=value.tolist(), **kwargs)
            scores.append(("hausdorff_mm", hausdorff_mm))
        for name, values in scores:
            self._scores.setdefault(f"{stage}/{name}", []).append(values.detach().float().cpu())

    def _log_scores(self, stage: str) -> dict[str, float]:
        summary = {}
        for name in ("dice", "hausdorff", "hausdorff_mm"):
            parts = self._scores.pop(f"{stage}/{name}", [])
            if not parts:
                continue
            values = self.all_gather(torch.cat(parts)).reshape(-1, len(STRUCTURES))
            means = torch.nanmean(values, dim=0)
            for structure, value in zip(STRUCTURES, means.tolist(), strict=True):
                summary[f"{stage}/{name}_{structure}"] = value
            summary[f"{stage}/{name}"] = float(torch.nanmean(means))
        self.log_dict(summary, rank_zero_only=True)
        return summary

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def test_summary(self) -> dict[str, float]:
        """Per-structure test Dice / Hausdorff, written by the module base to ``test_summary.json``."""
        return self._log_scores("test")

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """``(T, C, H, W)`` frames -> ``(T, H, W)`` labels, ``predict_chunk`` frames per forward pass."""
        parts = [self(chunk.to(self.device)).argmax(dim=1) for chunk in torch.split(images, self.hparams.predict_chunk)]
        return torch.cat(parts)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[SequencePrediction]:
        """One whole sequence per batch (:class:`CamusFramesDataModule` predict loader)."""
        labels = self.segment(batch["image"]).cpu().numpy().astype(np.uint8)
        datamodule = self.trainer.datamodule
        sequence = datamodule.sequences[int(batch["sequence"][0])]
        out_dir = Path(self.hparams.predictions_dir or Path(self.trainer.default_root_dir) / "predictions")
        mask_file = out_dir / sequence.patient / f"{sequence.name}_half_sequence_gt.nii.gz"
        cfg = next(datamodule.data_dir.glob(f"**/{sequence.patient}/Info_{sequence.view}.cfg"), None)
        return [
            SequencePrediction(
                sequence.name, sequence.patient, len(labels), str(mask_file), labels, sequence.spacing, cfg
            )
        ]
