"""``AnatomicalVAE``: an attribute-regularised VAE over segmentation maps, and the post-processing built on it.

Training (Painchaud et al., TMI 2022): one-hot masks -> encoder -> z -> decoder -> class logits;
loss = ce_weight * CE + dice_weight * (1 - Dice) + kl_weight * KL + attribute_weight * AR-VAE attribute loss on the
first ``len(attributes)`` latent dims (lv_area, lv_base_width, lv_length, lv_orientation, myo_area, epi_center_x,
epi_center_y in dims 0-6 by default, measured in the map's pixels unless ``attribute_units="mm"``). After fitting, :meth:`build_latent_bank` densifies the space of valid shapes
(KDE + rejection sampling, decode, keep valid); the bank is a buffer, so it is saved with (and loaded from) the
checkpoint. :meth:`correct` makes invalid frames valid (nearest valid latent, then back toward the original, then the
input's labels put back wherever the frame stays valid) and :meth:`smooth` makes a sequence temporally consistent;
``predict`` (on :class:`echo_modules.anatomical_vae.data.MaskFolderDataModule`) does both on every file of a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from echo_modules.anatomical_vae.attributes import ATTRIBUTES, compute_attributes
from echo_modules.anatomical_vae.criteria import CriteriaThresholds, compute_criteria
from echo_modules.anatomical_vae.latent_bank import BankStats, rejection_sample_bank
from echo_modules.anatomical_vae.losses import attribute_loss, kl_divergence, soft_dice_loss
from echo_modules.anatomical_vae.networks import SegmentationDecoder, SegmentationEncoder
from echo_modules.anatomical_vae.pipeline import VALIDITY_HEADER, FileResult, log_overlays, process_masks, write_tables
from echo_modules.anatomical_vae.postprocess import (
    ATTRIBUTE_THRESHOLDS,
    SmoothingBoundary,
    correct_latents,
    dice_per_class,
    dim_boundaries,
    keep_input_where_valid,
    smooth_latent_sequence,
    snake,
    temporal_metrics,
)
from echo_modules.common.module import EchoModule, PredictionRecord, gather_lists


@dataclass
class FrameValidity(PredictionRecord):
    """A row of ``validity.csv`` written by ``predict``: one frame's criteria before and after."""

    filename: str
    frame: int
    valid_before: int
    failed_before: str
    valid_after: int
    failed_after: str

    def row(self) -> dict[str, Any]:
        values = (self.filename, self.frame, self.valid_before, self.failed_before, self.valid_after, self.failed_after)
        return dict(zip(VALIDITY_HEADER, values, strict=True))


class AnatomicalVAE(EchoModule):
    def __init__(
        self,
        image_size: int = 256,
        num_classes: int = 4,
        latent_dim: int = 16,
        base_channels: int = 48,
        num_blocks: int = 4,
        ce_weight: float = 0.1,
        dice_weight: float = 1.0,
        kl_weight: float = 1.0e-4,
        attribute_weight: float = 0.1,
        attribute_delta: float = 16.0,
        attributes: tuple[str, ...] = ATTRIBUTES,
        attribute_units: Literal["pixels", "mm"] = "pixels",
        lr: float = 5.0e-4,
        cosine_schedule: bool = False,
        bank_proposals: int = 1_000_000,
        bank_max_size: int = 200_000,
        bank_batch_size: int = 2048,
        bank_seed: int = 0,
        bank_sampler: Literal["kde", "rejection"] = "kde",
        bank_proposal: Literal["student_t", "gaussian"] = "student_t",
        bank_proposal_dof: int = 5,
        build_bank_after_fit: bool = True,
        correction_grid_points: int = 9,
        correction_bisection_steps: int = 4,
        correction_keep_input: bool = True,
        smoothing_other_weight: float = 50.0,
        smoothing_max_weight: float = 128.0,
        smoothing_depth: int = 5,
        smoothing_check_decoded: bool = True,
        smoothing_boundary: SmoothingBoundary = "trend_cubic",
        smoothing_keep_pinned: bool = True,
        erosion_ratio_min: float = 0.12,
        width_ratio_max: float = 4.15,
        lv_background_frontier_max: float = 0.4,
        myo_atrium_frontier_max: float = 0.11,
        gap_tolerance_fraction: float = 2.0**-14,
        predictions_dir: str | None = None,
        predict_smooth: bool = True,
        predict_max_overlays: int = 8,
    ) -> None:
        """image_size: the square mask size (a multiple of ``2**num_blocks``). attributes: names from
        :data:`echo_modules.anatomical_vae.attributes.ATTRIBUTES` regularised in latent dims ``0..len-1``.
        attribute_units: ``pixels`` (default) measures them on the map as the encoder sees it; ``mm`` uses the batch's
        pixel spacing. The encoder sees label maps only, so a physical attribute is not a function of its input
        wherever the imaging depth varies (CAMUS, and the phantom, whose depth follows the heart: its lv_area in mm^2
        ranks only 0.57 with the same area in pixels), and the dim cannot be made monotonic in it.
        bank_*: sampling the KDE of the codes (proposals drawn, bank cap, ``kde`` exact draws or vital's
        ``rejection`` sampling with a ``bank_proposal`` heavier than the KDE and a true envelope, see
        :mod:`echo_modules.anatomical_vae.latent_bank`). The thresholds are the criteria's
        (:class:`CriteriaThresholds`; vital's values, calibrated at 256 px: smaller masks need looser ones).
        correction_keep_input: after decoding the corrected latent, put back the input's labels wherever that keeps
        the frame valid (:func:`keep_input_where_valid`); False: the decoding alone, as in the papers.
        smoothing_*: the snake's weight for non-attribute dims, the search range and depth for attribute dims;
        smoothing_check_decoded: also raise an attribute dim's weight until the attribute of the decoded masks meets
        its threshold (False: castor's latent criterion only, see :func:`smooth_latent_sequence`).
        smoothing_boundary: the smoother's operator (:func:`smoothing_operator`): ``trend_cubic`` (default) keeps
        the sequence's least-squares cubic trend exactly and smooths the residual with castor's free-ended snake, so
        every frame loses its jitter, the end frames included, and the ED -> ES trend keeps its amplitude
        (``trend_linear`` / ``trend_quadratic`` / ``trend_cosine``: other trend bases); ``pinned`` castor's snake
        with the first and last frames held, so a trend between them keeps its amplitude (their jitter kept);
        ``castor`` the papers' exact snake, whose free ends shrink the trend (EF -22 points on the README's phantom
        chain); ``volume_trend`` a boundary per dim (:func:`dim_boundaries`): trend_cubic on the volume and unnamed
        dims, castor on the pose dims;
        ``second_difference`` a Whittaker smoother that keeps linear trends but moves the ends;
        ``pinned_second_difference`` its rows on the inner frames with the ends held.
        smoothing_keep_pinned: with ``pinned``, the held frames keep their input masks (see :meth:`smooth`).
        predictions_dir: where ``predict`` writes the corrected masks and its tables (default ``<run dir>/corrected``);
        predict_smooth: also smooth sequences of 3+ frames in time (else correct only); predict_max_overlays:
        before/after images of invalid input frames logged to a W&B logger (``--config configs/logger/wandb.yaml``)."""
        super().__init__()
        self.save_hyperparameters()
        unknown = [name for name in attributes if name not in ATTRIBUTES]
        if unknown or len(attributes) > latent_dim:
            raise ValueError(f"attributes must be <= latent_dim names from {ATTRIBUTES}, got {list(attributes)}")
        if attribute_units not in ("pixels", "mm"):
            raise ValueError(f"attribute_units must be 'pixels' or 'mm', got {attribute_units!r}")
        self.attribute_columns = [ATTRIBUTES.index(name) for name in attributes]
        self.encoder = SegmentationEncoder(num_classes, image_size, latent_dim, base_channels, num_blocks)
        self.decoder = SegmentationDecoder(num_classes, image_size, latent_dim, base_channels, num_blocks)
        self.thresholds = CriteriaThresholds(
            erosion_ratio_min=erosion_ratio_min,
            width_ratio_max=width_ratio_max,
            lv_background_frontier_max=lv_background_frontier_max,
            myo_atrium_frontier_max=myo_atrium_frontier_max,
            gap_tolerance_fraction=gap_tolerance_fraction,
        )
        self.register_buffer("latent_bank", torch.zeros(0, latent_dim))
        self.bank_stats: BankStats | None = None
        self.bank_spacing: tuple[float, float] = (1.0, 1.0)
        # (2, 7) low/high of each attribute (the model's units) and (2, latent_dim) of each latent dim over the
        # bank's ground truth: castor's min-max scaling of the temporal thresholds (saved with the checkpoint)
        self.attribute_bounds: np.ndarray | None = None
        self.code_bounds: np.ndarray | None = None
        self._predicted: list[FileResult] = []

    # ------------------------------------------------------------------ network

    def one_hot(self, masks: torch.Tensor) -> torch.Tensor:
        return F.one_hot(masks.long(), self.hparams.num_classes).permute(0, 3, 1, 2).float()

    def forward(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(self.one_hot(masks))
        return self.decoder(mean), mean, log_var

    @torch.no_grad()
    def encode(self, masks: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
        """Latent means ``(N, D)`` of label maps ``(N, H, W)``."""
        masks = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
        outs = [self.encoder(self.one_hot(part.to(self.device)))[0] for part in torch.split(masks, batch_size)]
        return torch.cat(outs)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Label maps ``(N, H, W)`` (argmax) of latents ``(N, D)``."""
        outs = [self.decoder(part.to(self.device)).argmax(dim=1) for part in torch.split(latents, batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, self.hparams.image_size, self.hparams.image_size)

    def valid(self, masks: torch.Tensor | np.ndarray, spacing: tuple[float, float] | None = None) -> np.ndarray:
        masks = masks.cpu().numpy() if torch.is_tensor(masks) else masks
        spacing = self.bank_spacing if spacing is None else tuple(float(v) for v in spacing)
        return compute_criteria(masks, spacing, self.thresholds).valid

    def decodes_valid(self, latents: torch.Tensor, spacing: tuple[float, float] | None = None) -> torch.Tensor:
        return torch.from_numpy(self.valid(self.decode(latents), spacing))

    # ------------------------------------------------------------------ training

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        masks = batch["mask"].long()
        mean, log_var = self.encoder(self.one_hot(masks))
        latent = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if self.training else mean
        logits = self.decoder(latent)
        ce = F.cross_entropy(logits, masks)
        dice = soft_dice_loss(logits, masks)
        kl = kl_divergence(mean, log_var)
        loss = self.hparams.ce_weight * ce + self.hparams.dice_weight * dice + self.hparams.kl_weight * kl
        if self.attribute_columns and self.hparams.attribute_weight > 0:
            spacing = batch.get("spacing") if self.hparams.attribute_units == "mm" else None
            spacing = spacing.cpu().numpy() if spacing is not None else (1.0, 1.0)
            values = compute_attributes(masks.cpu().numpy(), spacing)[:, self.attribute_columns]
            attributes = torch.as_tensor(values, dtype=latent.dtype, device=latent.device)
            regularised = latent[:, : len(self.attribute_columns)]
            attr = attribute_loss(regularised, attributes, self.hparams.attribute_delta)
            loss = loss + self.hparams.attribute_weight * attr
            self.log(f"{stage}/attribute", attr, batch_size=len(masks))
        self.log_dict({f"{stage}/ce": ce, f"{stage}/dice_loss": dice, f"{stage}/kl": kl}, batch_size=len(masks))
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(masks))
        if stage != "train":
            hard = torch.from_numpy(dice_per_class(logits.argmax(dim=1).cpu().numpy(), masks.cpu().numpy()))
            self.log(f"{stage}/dice", hard.mean().item(), prog_bar=True, batch_size=len(masks), sync_dist=True)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        """Adam (the paper's); ``cosine_schedule`` decays the rate to 0 over the fit's steps (short CPU fits)."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if not self.hparams.cosine_schedule:
            return optimizer
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ latent bank

    @torch.no_grad()
    def build_latent_bank(self, masks: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> BankStats:
        """Encode ground-truth ``masks`` (N, H, W), rejection-sample the KDE of their codes, keep valid decodings."""
        was_training = self.training
        self.eval()
        self.bank_spacing = tuple(float(s) for s in spacing)
        codes = self.encode(masks).cpu()
        attributes = self.attributes_of(masks, spacing)
        self.attribute_bounds = np.stack([np.nanmin(attributes, axis=0), np.nanmax(attributes, axis=0)])
        self.code_bounds = np.stack([codes.min(dim=0).values.numpy(), codes.max(dim=0).values.numpy()])
        bank, stats = rejection_sample_bank(
            codes,
            lambda z: self.decodes_valid(z),
            num_proposals=self.hparams.bank_proposals,
            batch_size=self.hparams.bank_batch_size,
            max_bank_size=self.hparams.bank_max_size,
            seed=self.hparams.bank_seed,
            sampler=self.hparams.bank_sampler,
            proposal=self.hparams.bank_proposal,
            dof=self.hparams.bank_proposal_dof,
        )
        self.latent_bank = bank.to(self.device)
        self.bank_stats = stats
        self.train(was_training)
        rank_zero_info(
            f"latent bank: {stats.valid} valid of {stats.accepted} accepted / {stats.proposals} proposals "
            f"(acceptance {stats.acceptance_rate:.3%}, valid {stats.valid_rate:.1%}, bandwidth {stats.bandwidth})"
        )
        return stats

    def on_train_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.hparams.build_bank_after_fit or not hasattr(datamodule, "split"):
            return
        sequences = datamodule.split("TRAIN") + datamodule.split("VAL")
        masks = np.concatenate([s.masks for s in sequences])
        spacing = tuple(np.mean([s.spacing for s in sequences], axis=0))
        self.build_latent_bank(masks, spacing)
        # the bank belongs with the final weights: rewrite the checkpoints that hold them (a "last" one, or the
        # latest of a callback that monitors nothing), not a "best" one taken at an earlier epoch
        paths = set()
        for callback in self.trainer.checkpoint_callbacks:
            paths.add(getattr(callback, "last_model_path", "") or "")
            if getattr(callback, "monitor", None) is None:
                paths.add(getattr(callback, "best_model_path", "") or "")
        for path in sorted(p for p in paths if p):
            self.trainer.save_checkpoint(path)  # a collective: every rank calls it, rank 0 writes

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["bank_spacing"] = list(self.bank_spacing)
        for key in ("attribute_bounds", "code_bounds"):
            value = getattr(self, key)
            checkpoint[key] = None if value is None else value.tolist()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        bank = checkpoint.get("state_dict", {}).get("latent_bank")
        if bank is not None:
            self.latent_bank = torch.zeros_like(bank)  # the loaded bank's size, so load_state_dict fits it
        self.bank_spacing = tuple(checkpoint.get("bank_spacing", (1.0, 1.0)))
        for key in ("attribute_bounds", "code_bounds"):
            value = checkpoint.get(key)
            setattr(self, key, None if value is None else np.asarray(value, np.float64))

    # ------------------------------------------------------------------ post-processing

    @torch.no_grad()
    def correct(self, masks: np.ndarray, spacing: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
        """Invalid frames of ``masks`` (N, H, W) replaced by the decoding of their corrected latent; valid frames
        untouched. Returns the masks and ``{"invalid": (N,) bool before, "kept": t of each corrected frame}``."""
        spacing = self.bank_spacing if spacing is None else tuple(float(v) for v in spacing)
        masks = np.asarray(masks)
        invalid = ~self.valid(masks, spacing)
        out = masks.copy()
        kept = np.ones(len(masks))
        if invalid.any():
            codes = self.encode(masks[invalid])
            latents, fraction = correct_latents(
                codes,
                self.latent_bank.to(codes),
                lambda z: self.decodes_valid(z, spacing),
                self.hparams.correction_grid_points,
                self.hparams.correction_bisection_steps,
            )
            decoded = self.decode(latents).cpu().numpy().astype(masks.dtype)
            if self.hparams.correction_keep_input:
                decoded = keep_input_where_valid(masks[invalid], decoded, lambda m: self.valid(m, spacing))
            out[invalid] = decoded
            kept[invalid] = fraction.cpu().numpy()
        return out, {"invalid": invalid, "kept": kept}

    def attributes_of(self, masks: np.ndarray, spacing: tuple[float, float] | None = None) -> np.ndarray:
        """``(N, 7)`` attributes of label maps in the model's units (pixels, or mm with ``spacing``)."""
        if self.hparams.attribute_units == "pixels":
            return compute_attributes(np.asarray(masks))
        return compute_attributes(np.asarray(masks), self.bank_spacing if spacing is None else spacing)

    def temporal_metrics(self, masks: np.ndarray, spacing: tuple[float, float] | None = None) -> dict[str, float]:
        """:func:`temporal_metrics` of a ``(T, H, W)`` sequence at the model's size and units, scaled by the bank's
        attribute bounds (castor's thresholds assume that scaling); ``spacing`` is the input's (mm units only)."""
        from datamodules.transforms import resize_masks

        masks = np.asarray(masks)
        size = self.hparams.image_size
        if self.hparams.attribute_units == "mm":
            spacing = self.bank_spacing if spacing is None else spacing
            spacing = (spacing[0] * masks.shape[1] / size, spacing[1] * masks.shape[2] / size)
        else:
            spacing = (1.0, 1.0)
        if masks.shape[1:] != (size, size):
            masks = resize_masks(masks, size)
        return temporal_metrics(masks, spacing, self.attribute_bounds)

    @torch.no_grad()
    def smooth(
        self,
        masks: np.ndarray,
        spacing: tuple[float, float] | None = None,
        weights: np.ndarray | None = None,
        boundary: str | tuple[str, ...] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A temporally smoothed ``(T, H, W)`` sequence (decoded smoothed latents) and the weight used per dim.

        Latent dims are scaled by the bank's code bounds for castor's criterion; with ``smoothing_check_decoded``
        the attributes of the decodings (scaled by the bank's attribute bounds) must meet the thresholds too. A
        checkpoint without bounds (built before they were stored) gets castor's latent criterion, each curve scaled by
        its own range. ``weights`` (one per latent dim) skips the search and smooths with them; ``boundary``
        overrides ``smoothing_boundary`` (:func:`smoothing_operator`). With the ``pinned`` boundary and
        ``smoothing_keep_pinned`` the first and last frames (a CAMUS half-sequence's ED and ES) keep their input
        masks: their latents do not move, and their decoding would only add the VAE's reconstruction error (on the
        README's phantom chain it shrinks the ED LV: EF -5 points on ground truth)."""
        boundary = self.hparams.smoothing_boundary if boundary is None else boundary
        codes = self.encode(np.asarray(masks)).double().cpu().numpy()
        thresholds = tuple(ATTRIBUTE_THRESHOLDS[name] for name in self.hparams.attributes)
        if weights is not None:
            weights = np.asarray(weights, np.float64)
            boundaries = dim_boundaries(boundary, tuple(self.hparams.attributes), codes.shape[1])
            smoothed = np.stack([snake(codes[:, d], w, boundaries[d]) for d, w in enumerate(weights)], axis=1)
        else:
            measure = None
            if self.hparams.smoothing_check_decoded and self.attribute_bounds is not None:
                low, high = (self.attribute_bounds[i][self.attribute_columns] for i in (0, 1))

                def measure(latents: np.ndarray) -> np.ndarray:
                    decoded = self.decode(torch.as_tensor(latents, dtype=torch.float32, device=self.device))
                    values = self.attributes_of(decoded.cpu().numpy(), spacing)[:, self.attribute_columns]
                    return (values - low) / np.maximum(high - low, 1e-12)

            smoothed, weights = smooth_latent_sequence(
                codes,
                thresholds,
                other_weight=self.hparams.smoothing_other_weight,
                max_weight=self.hparams.smoothing_max_weight,
                depth=self.hparams.smoothing_depth,
                code_bounds=self.code_bounds,
                measure=measure,
                boundary=boundary,
                attributes=tuple(self.hparams.attributes),
            )
        decoded = self.decode(torch.as_tensor(smoothed, dtype=torch.float32, device=self.device)).cpu().numpy()
        decoded = decoded.astype(np.uint8)
        pinned = isinstance(boundary, str) and boundary.startswith("pinned")
        if pinned and self.hparams.smoothing_keep_pinned and len(decoded) >= 2:
            decoded[[0, -1]] = np.asarray(masks)[[0, -1]]
        return decoded, weights

    # ------------------------------------------------------------------ predict: a folder of segmentations

    @property
    def predictions_dir(self) -> Path:
        return Path(self.hparams.predictions_dir) if self.hparams.predictions_dir else self.run_dir / "corrected"

    @property
    def predictions_csv(self) -> Path:
        """Where the base's PredictionWriter writes the per-frame validity rows that ``predict_step`` returns."""
        return self.predictions_dir / "validity.csv"

    def on_predict_epoch_start(self) -> None:
        if len(self.latent_bank) == 0:
            from datamodules.errors import ConfigError

            raise ConfigError("AnatomicalVAE predict: the model has no latent bank (give --ckpt_path of a fitted run)")
        self._predicted = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[FrameValidity]:
        """One mask file per batch (:class:`echo_modules.anatomical_vae.data.MaskFolderDataModule`): corrected (and
        smoothed) masks written under :attr:`predictions_dir` in the input's format and relative path."""
        if "masks" not in batch or "file" not in batch:
            from datamodules.errors import ConfigError

            raise ConfigError(
                "AnatomicalVAE predict corrects a folder of segmentations: use "
                "--data echo_modules.anatomical_vae.MaskFolderDataModule --data.data_dir FOLDER"
            )
        masks = batch["masks"].cpu().numpy().astype(np.uint8)
        spacing = tuple(float(v) for v in batch["spacing"])
        result = process_masks(
            self,
            masks,
            spacing,
            batch["file"],
            Path(batch["source"]),
            self.predictions_dir,
            self.hparams.predict_smooth,
            self.hparams.predict_max_overlays,
        )
        room = self.hparams.predict_max_overlays - sum(len(r.overlays) for r in self._predicted)
        result.overlays = result.overlays[: max(room, 0)]  # before/after images for a W&B logger, capped per rank
        self._predicted.append(result)
        return [FrameValidity(*row) for row in result.validity_rows]

    def on_predict_epoch_end(self) -> None:
        """temporal.csv and (CAMUS layout) indices.csv beside validity.csv; every rank's files, written by rank 0."""
        results = gather_lists(self._predicted)  # a collective: every rank calls it
        self._predicted = []
        if results and self.trainer.is_global_zero:
            summary = write_tables(results, self.predictions_dir, validity=False)
            self._log_overlays(results)
            text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
            rank_zero_info(f"corrected into {self.predictions_dir}: {text}")

    def _log_overlays(self, results: list[FileResult]) -> None:
        """Before/after overlays of the invalid input frames (``anatomy/before_after``) to every W&B logger."""
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                log_overlays(logger.experiment, results, self.hparams.predict_max_overlays)
