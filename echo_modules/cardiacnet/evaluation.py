"""CardiacNet evaluation: the decision threshold, abnormality-map smoothing and localisation statistics, the
per-run test summary. Pure functions of tensors and arrays, so they are tested without a model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from echo_modules.common.module import average_clip_predictions

ABNORMAL = 1


@dataclass(order=True)
class TestRow:
    """One test video's outcome (``test_videos.csv`` row; ordered by file name)."""

    __test__ = False  # not a pytest test class

    filename: str
    score: float  # the chosen disease score, higher = more abnormal
    label: int
    ef_pred: float = math.nan
    ef_true: float = math.nan
    map_region_mass: float = math.nan  # share of the abnormality map inside the known region
    map_control_mass: float = math.nan  # ... inside same-shape control regions
    map_dice: float = math.nan
    structure_dice: float = math.nan  # chambers of the clip vs of its deformation to normal

    CSV_HEADER = ("FileName", "score", "label", "EF_pred", "EF_true", "map_region_mass", "map_control_mass",
                  "map_dice", "structure_dice")  # fmt: skip

    def csv_row(self) -> list[Any]:
        return [self.filename, self.score, self.label, self.ef_pred, self.ef_true, self.map_region_mass,
                self.map_control_mass, self.map_dice, self.structure_dice]  # fmt: skip


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


def smooth_maps(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian-smooth ``(V, H, W)`` maps (``sigma`` in pixels; 0 = unchanged)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    smoothed = F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return smoothed[:, 0]


def imaged_area(video: Tensor, clip_owner: Tensor, num_videos: int) -> Tensor:
    """``(V, H, W)`` bool: pixels whose intensity ever changes over a video's clips (the ultrasound sector; the
    background outside it is constant)."""
    spread = (video.amax(dim=(1, 2)) - video.amin(dim=(1, 2))).float()  # (N, H, W)
    per_video = average_clip_predictions(spread, clip_owner, num_videos)
    return per_video > 1e-3


def map_region_statistics(
    video_map: Tensor, region: Tensor, imaged: Tensor, placements: int = 64, seed: int = 0
) -> dict[str, float] | None:
    """Share of a map's mass inside the known abnormal ``region`` vs inside random same-shape regions (the region
    translated to places that lie wholly in the imaged area), and the Dice of the map's top pixels (as many as the
    region has) with the region. None when the map is empty or no control placement fits."""
    video_map = video_map.float().clamp_min(0) * imaged
    total = video_map.sum()
    if total <= 0:
        return None
    region = region.bool()
    height, width = region.shape
    generator = torch.Generator().manual_seed(seed)
    draw = lambda extent: torch.randint(-extent // 2, extent // 2 + 1, (placements * 8,), generator=generator)  # noqa: E731
    shifts = torch.stack([draw(height), draw(width)], 1)
    control: list[float] = []
    for dy, dx in shifts.tolist():
        if (dy, dx) == (0, 0):
            continue
        moved = torch.roll(region, shifts=(dy, dx), dims=(0, 1))
        if moved.sum() != region.sum() or not bool(imaged[moved].all()):
            continue
        control.append(float(video_map[moved].sum() / total))
        if len(control) == placements:
            break
    if not control:
        return None
    area = int(region.sum())
    top = torch.zeros_like(region)
    top.view(-1)[torch.topk(video_map.flatten(), area).indices] = True
    dice = 2 * float((top & region).sum()) / (2 * area)
    region_mass = float(video_map[region].sum() / total)
    return {"region_mass": region_mass, "control_mass": float(np.mean(control)), "dice": dice}


def test_summary(rows: list[TestRow], threshold: float, train_ef_mean: float = math.nan) -> dict[str, Any]:
    """Per-run numbers for ``test_summary.json`` from the gathered per-video rows (and, for the EF baseline, the
    training split's mean EF)."""
    column = lambda name: np.array([getattr(r, name) for r in rows], dtype=float)  # noqa: E731
    labels = column("label")
    summary: dict[str, Any] = {"videos": len(rows), "decision_threshold": threshold}
    summary["abnormal_videos"] = int((labels == ABNORMAL).sum())
    region, control, dice = column("map_region_mass"), column("map_control_mass"), column("map_dice")
    if np.isfinite(region).any():
        summary["map_region_mass"] = float(np.nanmean(region))
        summary["map_control_mass"] = float(np.nanmean(control))
        summary["map_region_ratio"] = summary["map_region_mass"] / max(summary["map_control_mass"], 1e-12)
        summary["map_dice"] = float(np.nanmean(dice))
        summary["map_videos"] = int(np.isfinite(region).sum())
        finite = np.isfinite(region) & np.isfinite(control)
        summary["map_region_beats_control"] = float(np.mean(region[finite] > control[finite]))  # share of videos
    structure = column("structure_dice")
    for name, chosen in (("structure_dice", labels == ABNORMAL), ("structure_dice_normal", labels != ABNORMAL)):
        if np.isfinite(structure[chosen]).any():
            summary[name] = float(np.nanmean(structure[chosen]))
    ef_pred, ef_true = column("ef_pred"), column("ef_true")
    both = np.isfinite(ef_pred) & np.isfinite(ef_true)
    if both.any():
        summary["ef_mae"] = float(np.abs(ef_pred[both] - ef_true[both]).mean())
        if math.isfinite(train_ef_mean):
            summary["ef_mean_predictor_mae"] = float(np.abs(train_ef_mean - ef_true[both]).mean())
            summary["ef_ratio"] = summary["ef_mae"] / max(summary["ef_mean_predictor_mae"], 1e-12)
    return summary


# ---------------------------------------------------------------------- structure consistency (the paper's ASD Dice)


def otsu_threshold(values: Tensor, bins: int = 128) -> Tensor:
    """Otsu's threshold of a 1-D tensor: the cut that maximises the between-class variance of its histogram."""
    low, high = values.min(), values.max()
    if high <= low:
        return low
    histogram = torch.histc(values.float(), bins, float(low), float(high))
    centres = low + (torch.arange(bins, device=values.device) + 0.5) * (high - low) / bins
    weight_below = histogram.cumsum(0)
    mass_below = (histogram * centres).cumsum(0)
    total, total_mass = weight_below[-1], mass_below[-1]
    weight_above = total - weight_below
    mean_below = mass_below / weight_below.clamp_min(1e-12)
    mean_above = (total_mass - mass_below) / weight_above.clamp_min(1e-12)
    between = weight_below * weight_above * (mean_below - mean_above).square()
    return low + (int(between.argmax()) + 1) * (high - low) / bins


def cavity_masks(frames: Tensor, imaged: Tensor, threshold: Tensor, sigma: float = 1.5) -> Tensor:
    """Blood-pool segmentation ``(T, H, W)`` bool: pixels of the imaged sector ``(H, W)`` darker than ``threshold``
    after Gaussian smoothing (the chambers are anechoic: dark in an echo, tissue bright)."""
    smoothed = smooth_maps(frames.float(), sigma)
    return (smoothed < threshold) & imaged.bool()[None]


def dice_score(first: Tensor, second: Tensor) -> Tensor:
    """Dice of two boolean masks over their last two dimensions (1 where both are empty)."""
    both = (first & second).sum((-2, -1)).float()
    sizes = (first.sum((-2, -1)) + second.sum((-2, -1))).float()
    return torch.where(sizes > 0, 2 * both / sizes.clamp_min(1), torch.ones_like(sizes))


def structure_dice(inputs: Tensor, recovered: Tensor, sigma: float = 1.5) -> Tensor:
    """Per-clip Dice ``(N,)`` of the cardiac chambers in ``inputs`` and in their ``recovered`` versions (both
    ``(N, T, H, W)``, e.g. ASD clips and their deformation to normal): are the ventricles and atria where they were?

    The paper scores this with a segmenter it does not publish; here the chambers are the blood pool (Otsu's
    threshold of the input clip's smoothed sector intensities, the same cut applied to both clips, so a recovery
    that brightens or darkens a chamber also counts against it). The imaged sector is where the input varies over
    time. Averaged over frames."""
    scores = []
    for clip, other in zip(inputs.float(), recovered.float()):
        imaged = (clip.amax(0) - clip.amin(0)) > 1e-3
        if not imaged.any():
            scores.append(clip.new_tensor(float("nan")))
            continue
        threshold = otsu_threshold(smooth_maps(clip, sigma)[:, imaged].flatten())
        scores.append(
            dice_score(
                cavity_masks(clip, imaged, threshold, sigma), cavity_masks(other, imaged, threshold, sigma)
            ).mean()
        )
    return torch.stack(scores)
