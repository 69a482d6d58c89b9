"""Measuring the EF of generated videos, to score EF conditioning: requested EF vs measured EF.

Two scorers, both ``(videos (B, C, T, H, W) in the diffusion data's normalised units, ED maps (B, H, W)) -> EF (B,)``:

- :class:`LVAreaEF`: the EF read off the video itself. The LV-area change (:func:`lv_area_change`: the dark share of
  the ED cavity lost by the most contracted frame) mapped to EF by a least-squares line fitted on real videos with
  known EF (the training split). It needs no trained network, so it cannot share a trained model's blind spots, and on
  the phantom it is calibrated against exact ground truth. It sees only what a clip shows: a clip that stops before
  end-systole under-reads, which the calibration absorbs when real and generated clips cover the same frames.
- :class:`RegressorEF`: an EF model (an ``EFRegressor`` or any EF module) from its checkpoint, or one in memory
  (:meth:`RegressorEF.from_model`), as EchoNet-Synthetic and EchoFlow score their synthetic videos. Videos are taken
  back to the 0-255 scale and normalised as that model was trained (the ``normalisation`` its checkpoint carries),
  resized to its frame size and channel count.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError
from echo_modules.diffusion.metrics import MyocardiumThreshold, lv_area_change


class LVAreaEF:
    """EF = ``intercept + slope * lv_area_change(video)``, fitted on real videos (:meth:`fit`)."""

    def __init__(self, threshold: float, slope: float, intercept: float) -> None:
        self.threshold, self.slope, self.intercept = float(threshold), float(slope), float(intercept)

    @classmethod
    def fit(cls, videos: torch.Tensor, ed_masks: torch.Tensor, ef: torch.Tensor) -> LVAreaEF:
        """Threshold halfway between LV blood and myocardium of the real first frames, then a least-squares line of
        the known EF on the LV-area change. Needs two EFs or more."""
        ef = ef.float()
        keep = torch.isfinite(ef)
        if keep.sum() < 2 or ef[keep].std() == 0:
            raise ConfigError("LVAreaEF.fit needs real videos with at least two different known EFs")
        threshold = MyocardiumThreshold.fit(videos[keep], ed_masks[keep]).threshold
        change = lv_area_change(videos[keep], ed_masks[keep], threshold).double()
        design = torch.stack([torch.ones_like(change), change], dim=1)
        intercept, slope = torch.linalg.lstsq(design, ef[keep].double()[:, None]).solution.flatten().tolist()
        return cls(threshold, slope, intercept)

    def __call__(self, videos: torch.Tensor, ed_masks: torch.Tensor) -> torch.Tensor:
        return self.intercept + self.slope * lv_area_change(videos, ed_masks, self.threshold)

    def __repr__(self) -> str:
        return (
            f"LVAreaEF(threshold={self.threshold:.3f}, EF = {self.intercept:.1f} + {self.slope:.1f} * lv_area_change)"
        )


class RegressorEF:
    """An EF module scoring generated videos (its clip prediction; the clip is the whole video).

    Args:
        checkpoint_path: a Lightning checkpoint of an EF module written by ``echolab fit`` (EFRegressor, CoReEcho).
        source_mean / source_std: the 0-255 normalisation of the videos to score (the diffusion data's).

    :meth:`from_model` builds one from an EF module in memory instead (e.g. one fitted a moment ago in a test).
    """

    def __init__(self, checkpoint_path: str, source_mean: float, source_std: float) -> None:
        path = Path(checkpoint_path)
        if not path.is_file():
            raise ConfigError(f"{checkpoint_path}: EF scorer checkpoint not found (model.ef_scorer)")
        from echo_modules.common.ef import EFModule

        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if "_instantiator" not in checkpoint.get("hyper_parameters", {}):
            raise ConfigError(f"{checkpoint_path}: not an EF model checkpoint written by echolab fit")
        model = EFModule.load_from_checkpoint(path, map_location="cpu")
        if not isinstance(model, EFModule):
            raise ConfigError(f"{checkpoint_path}: a {type(model).__name__} checkpoint, not an EF model")
        stats = checkpoint.get("normalisation") or {"mean": 0.0, "std": 1.0}
        self._attach(model, stats, *_input_geometry(checkpoint), source_mean, source_std)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        source_mean: float,
        source_std: float,
        normalisation: dict[str, float] | None = None,
        frame_size: int | None = None,
        channels: int | None = None,
    ) -> RegressorEF:
        """A scorer from an EF module in memory (an ``EFModule``: EFRegressor, CoReEcho).

        ``normalisation``: the 0-255 ``{"mean", "std"}`` the model was trained on; default: the one its checkpoint
        carried (a model loaded from one), else its trainer's DataModule's (a model fitted in this process), else an
        error. ``frame_size``: the frame size it expects (default: score at the videos' own size). ``channels``: its
        input channels (default: those of its first 3D convolution).
        """
        from echo_modules.common.ef import EFModule

        if not isinstance(model, EFModule):
            raise ConfigError(f"RegressorEF.from_model needs an EF model (EFModule), got {type(model).__name__}")
        if normalisation is None:
            normalisation = getattr(model, "_checkpoint_normalisation", None)
        if normalisation is None:
            datamodule = getattr(model._trainer, "datamodule", None) if model._trainer is not None else None
            if getattr(datamodule, "norm_mean", None) is not None:
                normalisation = {"mean": float(datamodule.norm_mean), "std": float(datamodule.norm_std)}
        if normalisation is None:
            raise ConfigError(
                f"RegressorEF.from_model: the intensity normalisation {type(model).__name__} was trained on is unknown "
                "(no checkpoint, no DataModule); pass normalisation={'mean': ..., 'std': ...} (0-255 scale)"
            )
        if channels is None:
            weights = [p for name, p in model.named_parameters() if p.ndim == 5 and name.endswith("weight")]
            channels = int(weights[0].shape[1]) if weights else 3
        scorer = cls.__new__(cls)
        scorer._attach(model, normalisation, frame_size, channels, source_mean, source_std)
        return scorer

    def _attach(self, model, normalisation: dict[str, float], frame_size: int | None, channels: int,
                source_mean: float, source_std: float) -> None:  # fmt: skip
        self.model = model.eval().requires_grad_(False)
        self.target_mean, self.target_std = float(normalisation["mean"]), float(normalisation["std"])
        self.source_mean, self.source_std = float(source_mean), float(source_std)
        self.frame_size, self.channels = frame_size, int(channels)

    def __repr__(self) -> str:
        return f"RegressorEF({type(self.model).__name__}, frame_size={self.frame_size}, channels={self.channels})"

    def __call__(self, videos: torch.Tensor, ed_masks: torch.Tensor | None = None) -> torch.Tensor:
        self.model.to(videos.device)
        grey = videos.float().mean(1, keepdim=True) * self.source_std + self.source_mean  # back to 0-255
        clips = ((grey.clamp(0, 255) - self.target_mean) / self.target_std).expand(-1, self.channels, -1, -1, -1)
        if self.frame_size is not None and clips.shape[-1] != self.frame_size:
            clips = F.interpolate(clips, size=(clips.shape[2], self.frame_size, self.frame_size), mode="trilinear")
        with torch.no_grad():
            return self.model.clip_outputs(clips.contiguous())["ef"].float()


def _input_geometry(checkpoint: dict) -> tuple[int | None, int]:
    """Frame size and channels the EF model was trained on (its DataModule's hyperparameters when saved)."""
    data = checkpoint.get("datamodule_hyper_parameters", {})
    size = data.get("frame_size")
    channels = int(data.get("channels", 0) or 0)
    if not channels:
        weights = [v for k, v in checkpoint["state_dict"].items() if v.ndim == 5 and k.endswith("weight")]
        channels = int(weights[0].shape[1]) if weights else 3
    return (int(size) if size else None), channels


def ef_agreement(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Summary of scored samples (one dict per video: ``ssim``, ``requested``, ``source`` and, when scored,
    ``measured``, ``measured_ef_blind``, ``measured_real``).

    ``ef_mae``: |measured - requested| of the EF-conditioned samples. Its controls: ``ef_mae_ef_blind`` (the same noise
    and map sampled without the EF: what the map alone gives), ``ef_mae_constant`` (a generator whose every video
    measures the mean requested EF) and ``scorer_mae_real`` (the scorer on the real videos against their true EF: the
    floor set by the measurement itself). ``ef_corr``: Pearson correlation of requested and measured EF. With several
    EFs asked of each map (``map`` keys; same noise), ``ef_direction`` is the share of maps whose sample asked for the
    highest EF measures higher than the one asked for the lowest, and ``ef_rise`` the mean measured difference (vs
    ``ef_rise_requested``, the requested one).
    """
    summary: dict[str, Any] = {"videos": len(rows)}
    if not rows:
        return summary
    summary["ssim"] = float(np.mean([row["ssim"] for row in rows]))
    scored = [row for row in rows if "measured" in row and math.isfinite(row["requested"])]
    if not scored:
        return summary
    requested = np.array([row["requested"] for row in scored])
    measured = np.array([row["measured"] for row in scored])
    blind = np.array([row["measured_ef_blind"] for row in scored])
    summary["ef_mae"] = float(np.abs(measured - requested).mean())
    summary["ef_mae_ef_blind"] = float(np.abs(blind - requested).mean())
    summary["ef_mae_constant"] = float(np.abs(requested - requested.mean()).mean())
    real = [(row["measured_real"], row["source"]) for row in scored if math.isfinite(row["source"])]
    if real:
        summary["scorer_mae_real"] = float(np.mean([abs(m - s) for m, s in real]))
    if requested.std() > 0 and measured.std() > 0:
        summary["ef_corr"] = float(np.corrcoef(requested, measured)[0, 1])
    if requested.std() > 0 and blind.std() > 0:
        summary["ef_corr_ef_blind"] = float(np.corrcoef(requested, blind)[0, 1])
    by_map: dict[str, list[tuple[float, float]]] = {}
    for row in scored:
        by_map.setdefault(row.get("map", ""), []).append((row["requested"], row["measured"]))
    steps = [(max(pairs)[1] - min(pairs)[1], max(pairs)[0] - min(pairs)[0]) for pairs in by_map.values()
             if max(pairs)[0] > min(pairs)[0]]  # fmt: skip
    if steps:  # several EFs asked of one map (same noise): does the measured EF move with the request?
        summary["ef_direction"] = float(np.mean([rise > 0 for rise, _ in steps]))
        summary["ef_rise"] = float(np.mean([rise for rise, _ in steps]))
        summary["ef_rise_requested"] = float(np.mean([span for _, span in steps]))
    return summary
