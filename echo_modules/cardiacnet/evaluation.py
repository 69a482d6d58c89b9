"""CardiacNet evaluation: per-clip outputs, the records ``test`` and ``predict`` write, the test metrics
(torchmetrics, reduced over DDP ranks), abnormality-map smoothing and localisation statistics, the structure Dice.
Pure functions of tensors and arrays (and metric containers), so they are tested without a model."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanMetric, SumMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from echo_modules.cardiacnet.settings import MAP_MODES, SCORE_KINDS
from echo_modules.common.metrics import ef_metrics
from echo_modules.common.module import PredictionRecord, average_clip_predictions, number_text

NORMAL, ABNORMAL = 0, 1
MAP_STATISTICS: tuple[str, ...] = ("region_mass", "control_mass", "dice")
# the anatomy-only reference map (the clip's mean intensity over time: where the bright tissue is; no model, no disease),
# scored with the same localisation statistics as the method's maps, beside them
ANATOMY_MAP = "anatomy"
SCORED_MAPS: tuple[str, ...] = (*MAP_MODES, ANATOMY_MAP)
STRUCTURE_DICE_KINDS: tuple[str, ...] = ("abnormal", "normal", "unpaired")


@dataclass
class ClipEvaluation:
    """Per-clip outputs of :meth:`CardiacNet.evaluate_clips`."""

    scores: dict[str, Tensor]  # score kind -> (N,) higher = more abnormal
    ef: Tensor | None  # (N,) EF in percent when the EF head is on
    maps: dict[str, Tensor]  # map mode -> (N, T, H, W) abnormality maps
    to_normal: Tensor  # (N, C, T, H, W) phi_B(x), the clip deformed to the normal class


@dataclass
class VideoMaps:
    """One video's maps to save (``save_video_maps``): clip-wise ``(clips, T, H, W)`` arrays."""

    out_dir: Path
    inputs: np.ndarray
    to_normal: np.ndarray
    maps: np.ndarray
    map_format: str


@dataclass
class CardiacNetPrediction(PredictionRecord):
    """One predicted video: a ``predictions.csv`` row, and its maps, both written by the base's
    ``PredictionWriter`` (the maps at batch end, on the rank that predicted the video)."""

    filename: str
    score: float
    probability: float
    label: int  # -1 = unknown
    ef_pred: float
    ef_true: float
    map_file: str = ""  # ";"-joined paths of the video's saved maps
    video_maps: VideoMaps | None = field(default=None, repr=False)  # dropped once written

    def write_files(self, module: Any) -> None:
        from echo_modules.cardiacnet.visualisation import save_video_maps

        if self.video_maps is not None:
            maps = self.video_maps
            self.map_file = save_video_maps(
                maps.out_dir, self.filename, maps.inputs, maps.to_normal, maps.maps, maps.map_format
            )
            self.video_maps = None

    def row(self) -> dict[str, Any]:
        return {
            "FileName": self.filename,
            "score": f"{self.score:.5f}",
            "probability": f"{self.probability:.5f}",
            "predicted_label": int(self.probability > 0.5),
            "label": "" if self.label < 0 else self.label,
            "EF_pred": number_text(self.ef_pred, 4),
            "EF_true": number_text(self.ef_true, 4),
            "map_file": self.map_file,
        }


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


class TestMetrics(nn.Module):
    """Everything ``test`` reports, as torchmetrics (so DDP ranks reduce them exactly): AUROC of each score kind,
    accuracy of the chosen one, map localisation means per map mode, the structure Dice by class, EF MAE and the
    training-mean EF predictor's, and the video counts."""

    __test__ = False

    def __init__(self, predict_ef: bool) -> None:
        super().__init__()
        self.auroc = nn.ModuleDict({kind: BinaryAUROC() for kind in SCORE_KINDS})
        self.accuracy = BinaryAccuracy()
        self.maps = nn.ModuleDict({f"{mode}_{name}": MeanMetric() for mode in SCORED_MAPS for name in MAP_STATISTICS})
        self.map_videos = SumMetric()  # videos with a known region and a scorable map (the chosen map mode)
        self.map_region_beats_control = MeanMetric()  # share of those whose region holds more than the controls
        self.map_beats = nn.ModuleDict({mode: MeanMetric() for mode in SCORED_MAPS})  # the same share, per map
        # the paper's ASD Dice: chambers of a clip vs of its deformation to normal (abnormal and normal clips), and
        # vs another video's deformation (what unrelated hearts would score)
        self.structure = nn.ModuleDict({name: MeanMetric() for name in STRUCTURE_DICE_KINDS})
        self.videos = SumMetric()
        self.abnormal_videos = SumMetric()
        self.ef = ef_metrics("test/ef_") if predict_ef else None
        self.ef_mean_predictor = MeanAbsoluteError() if predict_ef else None

    def update_maps(self, statistics: list[dict[str, float]], map_mode: str) -> None:
        """One batch's per-video map statistics (:func:`video_map_statistics`): means per map mode; video count and
        region-beats-control share for the chosen ``map_mode``."""
        device = self.map_videos.device
        for mode in SCORED_MAPS:
            for stats in statistics:
                for name in MAP_STATISTICS:
                    if f"{mode}_{name}" in stats:
                        self.maps[f"{mode}_{name}"].update(torch.tensor(stats[f"{mode}_{name}"], device=device))
                if f"{mode}_region_mass" in stats:
                    beats = float(stats[f"{mode}_region_mass"] > stats[f"{mode}_control_mass"])
                    self.map_beats[mode].update(torch.tensor(beats, device=device))
        for stats in statistics:
            if f"{map_mode}_region_mass" in stats:
                self.map_videos.update(torch.ones((), device=device))
                beats = float(stats[f"{map_mode}_region_mass"] > stats[f"{map_mode}_control_mass"])
                self.map_region_beats_control.update(torch.tensor(beats, device=device))

    def update_structure(self, per_video: Tensor, unpaired: Tensor | None, labels: Tensor) -> None:
        """One batch's structure Dice (:func:`paired_structure_dice`), by class, and the unpaired control."""
        for kind, chosen in (("abnormal", labels == ABNORMAL), ("normal", labels == NORMAL)):
            values = per_video[chosen & torch.isfinite(per_video)]
            if len(values):
                self.structure[kind].update(values)
        if unpaired is not None:
            self.structure["unpaired"].update(unpaired)

    def epoch_values(self, updated: Callable[..., bool], map_mode: str) -> dict[str, Tensor]:
        """The epoch's map localisation (``test/map_*``; the other map modes and the anatomy-only reference as
        ``test/map_<mode>_*``, with ``test/map_<mode>_beats_control``) and structure
        Dice (``test/structure_dice[_normal|_unpaired]``) values, for the metrics some rank updated (``updated``: the
        same answer on every rank, so all or none enter each synchronising ``compute``). Resets them."""
        values: dict[str, Tensor] = {}
        for mode in SCORED_MAPS:
            means = [self.maps[f"{mode}_{name}"] for name in MAP_STATISTICS]
            if not updated(*means, self.map_beats[mode]):
                continue
            region, control, dice = (metric.compute() for metric in means)
            prefix = "test/map_" if mode == map_mode else f"test/map_{mode}_"
            values |= {f"{prefix}region_mass": region, f"{prefix}control_mass": control,
                       f"{prefix}region_ratio": region / control.clamp_min(1e-12), f"{prefix}dice": dice,
                       f"test/map_{mode}_beats_control": self.map_beats[mode].compute()}  # fmt: skip
            for metric in (*means, self.map_beats[mode]):
                metric.reset()
        for kind, metric in self.structure.items():
            if updated(metric):
                values[f"test/structure_dice{'' if kind == 'abnormal' else '_' + kind}"] = metric.compute()
                metric.reset()
        return values

    def summary(self, logged: dict[str, float], updated: Callable[..., bool]) -> dict[str, Any]:
        """``test_summary.json``'s own entries from the (DDP-reduced) metrics and the ``logged`` epoch values: the
        video counts, the chosen map mode's localisation, the structure Dice, EF MAE beside the training-mean
        predictor's. A collective: call it on every rank."""
        summary: dict[str, Any] = {"videos": int(self.videos.compute())}
        summary["abnormal_videos"] = int(self.abnormal_videos.compute())
        if "test/map_region_mass" in logged:
            for name in ("region_mass", "control_mass", "region_ratio", "dice"):
                summary[f"map_{name}"] = logged[f"test/map_{name}"]
            summary["map_videos"] = int(self.map_videos.compute())
            summary["map_region_beats_control"] = float(self.map_region_beats_control.compute())
        for name in ("structure_dice", "structure_dice_normal"):
            if f"test/{name}" in logged:
                summary[name] = logged[f"test/{name}"]
        if "test/ef_mae" in logged:
            summary["ef_mae"] = logged["test/ef_mae"]
            if self.ef_mean_predictor is not None and updated(self.ef_mean_predictor):
                summary["ef_mean_predictor_mae"] = float(self.ef_mean_predictor.compute())
                summary["ef_ratio"] = summary["ef_mae"] / max(summary["ef_mean_predictor_mae"], 1e-12)
        return summary


def summary_line(summary: dict[str, Any]) -> str:
    """The line ``echolab test`` prints: AUROC and accuracy of the chosen score, map localisation, structure Dice,
    EF."""
    line = (
        f"CardiacNet test over {summary['videos']} videos: AUROC {summary.get('test/auroc', math.nan):.3f} "
        f"({summary['score']} score), accuracy {summary.get('test/accuracy', math.nan):.3f}"
    )
    if "map_region_mass" in summary:
        line += (
            f"; {summary['map_mode']} map mass in the known region {summary['map_region_mass']:.3f} vs "
            f"{summary['map_control_mass']:.3f} in same-shape control regions"
        )
    if "structure_dice" in summary:
        line += f"; chamber Dice of abnormal clips vs their deformation to normal {summary['structure_dice']:.3f}"
    if "ef_mae" in summary:
        line += f"; EF MAE {summary['ef_mae']:.2f}"
        if "ef_mean_predictor_mae" in summary:
            line += f" (the training mean gives {summary['ef_mean_predictor_mae']:.2f})"
    return line


def per_video_rows(
    batch: dict[str, Any],
    score: Tensor,
    ef: Tensor | None,
    statistics: list[dict[str, float]],
    structure: Tensor,
    map_mode: str,
) -> list[TestRow]:
    """One :class:`TestRow` per video of a test batch (``test_videos.csv``)."""
    rows = []
    for index, name in enumerate(batch["filename"]):
        stats = statistics[index]
        rows.append(
            TestRow(
                filename=name,
                score=float(score[index]),
                label=int(batch["label"][index]),
                ef_pred=float(ef[index]) if ef is not None else math.nan,
                ef_true=float(batch["ef"][index]),
                map_region_mass=stats.get(f"{map_mode}_region_mass", math.nan),
                map_control_mass=stats.get(f"{map_mode}_control_mass", math.nan),
                map_dice=stats.get(f"{map_mode}_dice", math.nan),
                structure_dice=float(structure[index]),
            )
        )
    return rows


def abnormality_maps(video: Tensor, to_abnormal: Tensor, to_normal: Tensor) -> dict[str, Tensor]:
    """Abnormality maps ``(N, T, H, W)`` of clips ``video`` ``(N, C, T, H, W)`` from their deformations to the
    abnormal (phi_A) and the normal class (phi_B), by map mode:

    - ``difference``: ``|x - phi_B(x)|``, where deforming the clip to normal changes it (the poster's visualisation);
    - ``contrast``: ``relu(|x - phi_B(x)| - |x - phi_A(x)|)``, that change less the generators' own reproduction
      error;
    - ``deformation``: ``|mean_t(phi_B(x) - phi_A(x))|``, the same for every frame of the clip: how the normal-ward
      and the abnormal-ward versions of the clip differ, with the sign kept until the clip's frames are averaged, so
      what both generators get wrong (speckle they cannot reproduce, blur at edges) cancels twice: between the
      generators and, being unsigned noise of either sign, over time. A disease that changes the anatomy over the
      whole cycle (a dilated right heart, a septal gap) survives both. The maps are per-video normalised where it
      matters: the localisation statistics are shares of a video's map mass, the overlays scale to each map's range.
    """
    video = video.float()
    error_to_normal = (video - to_normal.float()).abs().mean(1)  # (N, T, H, W)
    error_to_abnormal = (video - to_abnormal.float()).abs().mean(1)
    deformation = (to_normal.float() - to_abnormal.float()).mean(1).mean(1, keepdim=True).abs()  # (N, 1, H, W)
    return {
        "difference": error_to_normal,
        "contrast": (error_to_normal - error_to_abnormal).clamp_min(0),
        "deformation": deformation.expand_as(error_to_normal),
    }


def anatomy_map(video: Tensor) -> Tensor:
    """The anatomy-only reference map ``(N, T, H, W)`` of clips ``(N, C, T, H, W)``: each pixel's mean intensity over
    the clip, shifted to start at 0 (bright tissue high, blood pool and background low), for every frame. It knows
    nothing of the disease: a localisation statistic that it passes measures where the heart's walls are."""
    mean = video.float().mean(1).mean(1, keepdim=True)  # (N, 1, H, W)
    low = mean.amin(dim=(2, 3), keepdim=True)
    return (mean - low).expand(-1, video.shape[2], -1, -1)


def ranking_value(score: Tensor) -> Tensor:
    """``score`` mapped monotonically into (0, 1) for torchmetrics' AUROC, which applies a sigmoid to a batch only
    when some value lies outside [0, 1]: without this, batches would be transformed inconsistently. The arctangent
    keeps large scores distinct where a float32 sigmoid would saturate at 1."""
    return 0.5 + torch.atan(score.double()).float() / math.pi


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


# ---------------------------------------------------------------------- one test batch


def video_map_statistics(
    maps: dict[str, Tensor], batch: dict[str, Any], sigma: float
) -> tuple[dict[str, Tensor], list[dict[str, float]]]:
    """Per-video maps ``(V, H, W)`` of each map mode (clip and frame means, smoothed by ``sigma`` pixels) and, for
    each video with a known abnormal region, their localisation statistics keyed ``<mode>_<statistic>``; the same
    statistics of the anatomy-only reference map (:func:`anatomy_map`) keyed ``anatomy_<statistic>``."""
    owner, videos = batch["clip_owner"], len(batch["label"])
    maps = dict(maps) | {ANATOMY_MAP: anatomy_map(batch["video"])}
    imaged = imaged_area(batch["video"], owner, videos)
    regions = batch.get("abnormal_region")
    has_region = batch.get("has_abnormal_region", torch.zeros(videos, dtype=torch.bool))
    video_maps: dict[str, Tensor] = {}
    statistics: list[dict[str, float]] = [{} for _ in range(videos)]
    for mode, clip_maps in maps.items():  # every map definition, so a run reports how each localises
        video_maps[mode] = smooth_maps(average_clip_predictions(clip_maps.mean(1), owner, videos), sigma)
        for index in range(videos):
            if regions is None or not bool(has_region[index]) or not bool(regions[index].any()):
                continue
            region = regions[index].to(video_maps[mode].device)
            values = map_region_statistics(video_maps[mode][index], region, imaged[index])
            if values is not None:
                statistics[index].update({f"{mode}_{name}": value for name, value in values.items()})
    return video_maps, statistics


def paired_structure_dice(
    inputs: Tensor, recovered: Tensor, owner: Tensor, videos: int
) -> tuple[Tensor, Tensor | None]:
    """Per-video chamber Dice ``(V,)`` of each clip with its own deformation to normal (``structure_dice`` averaged
    over a video's clips), and per-clip Dice against a clip of the next video's deformation (an unpaired control;
    None when the batch holds one video). ``inputs`` / ``recovered``: ``(N, T, H, W)``."""
    per_video = average_clip_predictions(structure_dice(inputs, recovered), owner, videos)
    if videos < 2:
        return per_video, None
    first_clip = torch.zeros(videos, dtype=torch.long, device=owner.device).index_reduce_(
        0, owner, torch.arange(len(owner), device=owner.device), "amin", include_self=False
    )
    other = first_clip[(owner + 1) % videos]  # a clip of the next video in the batch
    unpaired = structure_dice(inputs, recovered[other])
    return per_video, unpaired[torch.isfinite(unpaired)]


def map_examples(
    batch: dict[str, Any], clips: ClipEvaluation, video_maps: Tensor, map_mode: str, room: int
) -> list[dict[str, Any]]:
    """Up to ``room`` abnormal videos of the batch (their first clip) for the test figure and the W&B videos."""
    first_clip = {int(o): i for i, o in reversed(list(enumerate(batch["clip_owner"].tolist())))}
    region = batch.get("abnormal_region")
    examples = []
    for index, label in enumerate(batch["label"].tolist()):
        if len(examples) >= room or int(label) != ABNORMAL:
            continue
        clip = first_clip[index]
        examples.append({
            "name": batch["filename"][index],
            "input": batch["video"][clip].float().mean(0).cpu().numpy(),  # (T, H, W)
            "to_normal": clips.to_normal[clip].mean(0).cpu().numpy(),
            "maps": clips.maps[map_mode][clip].cpu().numpy(),
            "video_map": video_maps[index].cpu().numpy(),
            "region": region[index].cpu().numpy() if region is not None else None,
        })  # fmt: skip
    return examples
