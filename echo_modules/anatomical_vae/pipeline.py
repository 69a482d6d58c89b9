"""Segment -> guarantee anatomy -> measure, on a folder of segmentations (ground truth or a segmenter's output).

For every mask file: the frames that fail a criterion are corrected in the VAE's latent space (nearest valid latent,
then back toward the original); sequences of 3+ frames are then smoothed in time and any frame the smoothing made
invalid is corrected again. Masks are resized (nearest neighbour) to the VAE's size and back, written in the input's
format under ``out_dir`` (same relative paths). Tables: validity per frame before/after, temporal metrics per
sequence before/after, and, for CAMUS-layout folders (``patientXXXX/Info_{2CH,4CH}.cfg`` beside the masks), EDV/ESV/EF
by Simpson's biplane method before and after against the cfg's reference EF.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.camus import _field, _number, read_info_cfg
from datamodules.transforms import resize_masks
from echo_modules.anatomical_vae.criteria import compute_criteria
from echo_modules.anatomical_vae.indices import agreement, clinical_indices
from echo_modules.anatomical_vae.mask_io import find_mask_files, read_masks, write_masks
from echo_modules.anatomical_vae.postprocess import dice_per_class
from echo_modules.common.module import write_csv

_CAMUS_NAME = re.compile(r"(patient\d+)_(2CH|4CH)_(half_sequence|sequence|ED|ES)_gt", re.IGNORECASE)
VALIDITY_HEADER = ["file", "frame", "valid_before", "failed_before", "valid_after", "failed_after"]
COLOURS = np.array([[0, 0, 0], [255, 60, 60], [60, 200, 60], [60, 120, 255]], np.uint8)


def _resize(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if masks.shape[1:] == shape:
        return masks
    import cv2

    return np.stack([cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) for m in masks])


def guarantee_anatomy(model, masks: np.ndarray, spacing: tuple[float, float], smooth: bool = True) -> np.ndarray:
    """Corrected (and, for sequences, smoothed) masks at the input's size; frames already valid and not smoothed
    stay exactly as they were."""
    size = model.hparams.image_size
    height, width = masks.shape[1:]
    small_spacing = (spacing[0] * height / size, spacing[1] * width / size)
    small = resize_masks(masks, size) if masks.shape[1:] != (size, size) else masks.copy()
    out = masks.copy()
    before = compute_criteria(masks, spacing, model.thresholds).valid
    if smooth and len(masks) >= 3:
        smoothed, _ = model.smooth(small)
        corrected, _ = model.correct(smoothed, small_spacing)
        return _resize(corrected, (height, width)).astype(masks.dtype)
    if (~before).any():
        corrected, _ = model.correct(small[~before], small_spacing)
        out[~before] = _resize(corrected, (height, width)).astype(masks.dtype)
    return out


def overlay(masks: np.ndarray) -> np.ndarray:
    """Label map(s) as RGB colours (LV red, MYO green, LA blue)."""
    return COLOURS[np.asarray(masks).clip(0, 3)]


@dataclass
class FileResult:
    """What the post-processing of one mask file leaves for the tables: its validity rows (one per frame), its
    temporal row (sequences of 3+ frames), the ED/ES frames a CAMUS-layout file gives the indices, and overlays."""

    file: str
    validity_rows: list[list]
    temporal_row: list | None
    camus: tuple[str, str, dict] | None  # (patient, view, {"spacing", "cfg", "ed": (in, out), "es": (in, out)})
    overlays: list[tuple[str, np.ndarray]] = field(default_factory=list)


def process_masks(
    model,
    masks: np.ndarray,
    spacing: tuple[float, float],
    relative: str | Path,
    source: Path,
    out_dir: Path,
    smooth: bool = True,
    max_overlays: int = 8,
) -> FileResult:
    """Correct (and smooth) one file's ``masks`` read from ``source``, write them to ``out_dir / relative`` in the
    input's format, and return its rows for the tables."""
    corrected = guarantee_anatomy(model, masks, spacing, smooth)
    write_masks(Path(out_dir) / relative, corrected, spacing)
    before = compute_criteria(masks, spacing, model.thresholds)
    after = compute_criteria(corrected, spacing, model.thresholds)
    rows, overlays = [], []
    for t in range(len(masks)):
        rows.append([str(relative), t, int(before.valid[t]), ";".join(before.failed_names(t)),
                     int(after.valid[t]), ";".join(after.failed_names(t))])  # fmt: skip
        if not before.valid[t] and len(overlays) < max_overlays:
            overlays.append((f"{relative}:{t}", np.concatenate([overlay(masks[t]), overlay(corrected[t])], axis=1)))
    temporal = None
    if len(masks) >= 3:
        tb, ta = model.temporal_metrics(masks, spacing), model.temporal_metrics(corrected, spacing)
        temporal = [str(relative), len(masks), tb["violations_any"], ta["violations_any"],
                    tb["frame_to_frame_dice"], ta["frame_to_frame_dice"]]  # fmt: skip
    camus = None
    match = _CAMUS_NAME.search(Path(relative).name)
    if match:
        patient, view, kind = match.group(1), match.group(2).upper(), match.group(3).lower()
        cfg = Path(source).parent / f"Info_{view}.cfg"
        frames = _ed_es_frames(kind, masks, corrected, cfg)
        if frames is not None:
            camus = (patient, view, {"spacing": spacing, "cfg": cfg, **frames})
    return FileResult(str(relative), rows, temporal, camus, overlays)


def _ed_es_frames(kind: str, masks: np.ndarray, corrected: np.ndarray, cfg: Path) -> dict | None:
    """``{"ed": (input, corrected)}`` or ``{"es": ...}`` (ED/ES files) or both (sequences, frames from the cfg)."""
    if kind in ("ed", "es"):
        return {kind: (masks[0], corrected[0])}
    fields = read_info_cfg(cfg) if cfg.is_file() else {}
    ed = min(max(int(_field(fields, "ED") or 1) - 1, 0), len(masks) - 1)
    es = min(max(int(_field(fields, "ES") or len(masks)) - 1, 0), len(masks) - 1)
    return {"ed": (masks[ed], corrected[ed]), "es": (masks[es], corrected[es])}


def write_tables(results: list[FileResult], out_dir: str | Path, validity: bool = True) -> dict[str, Any]:
    """validity.csv (unless the caller writes it), temporal.csv and (CAMUS layout) indices.csv under ``out_dir``;
    returns the summary: valid fractions before/after, mean temporal metrics, EF agreement before/after."""
    out_dir = Path(out_dir)
    validity_rows = [row for result in results for row in result.validity_rows]
    temporal_rows = [result.temporal_row for result in results if result.temporal_row is not None]
    if validity:
        write_csv(out_dir / "validity.csv", VALIDITY_HEADER, validity_rows)
    write_csv(out_dir / "temporal.csv", ["file", "frames", "violations_before", "violations_after",
              "frame_to_frame_dice_before", "frame_to_frame_dice_after"], temporal_rows)  # fmt: skip
    frames = len(validity_rows)
    summary: dict[str, Any] = {
        "frames": frames,
        "valid_before": sum(row[2] for row in validity_rows) / max(frames, 1),
        "valid_after": sum(row[4] for row in validity_rows) / max(frames, 1),
    }
    if temporal_rows:
        table = np.array([row[2:] for row in temporal_rows], float)
        summary.update(violations_before=table[:, 0].mean(), violations_after=table[:, 1].mean(),
                       frame_to_frame_dice_before=table[:, 2].mean(), frame_to_frame_dice_after=table[:, 3].mean())  # fmt: skip
    views: dict[str, dict[str, dict]] = {}
    for result in results:
        if result.camus is not None:
            patient, view, entry = result.camus
            views.setdefault(patient, {}).setdefault(view, {}).update(entry)
    if views:
        summary.update(_indices_table(views, out_dir / "indices.csv"))
    return summary


def log_overlays(wandb_run: Any, results: list[FileResult], max_overlays: int = 8) -> None:
    """Before/after overlays of the invalid input frames to a W&B run (``anatomy/before_after``)."""
    import wandb

    overlays = [item for result in results for item in result.overlays][:max_overlays]
    if overlays:
        wandb_run.log({"anatomy/before_after": [wandb.Image(image, caption=f"{name} (left: input, right: corrected)")
                                                for name, image in overlays]})  # fmt: skip


def postprocess_folder(
    model,
    masks_dir: str | Path,
    out_dir: str | Path,
    smooth: bool = True,
    default_spacing: tuple[float, float] = (1.0, 1.0),
    wandb_run: Any = None,
    max_overlays: int = 8,
) -> dict[str, Any]:
    """Correct every segmentation under ``masks_dir`` into ``out_dir``; write validity.csv, temporal.csv and (CAMUS
    layout) indices.csv there; log before/after overlays to ``wandb_run`` when given. Returns a summary."""
    root, out_dir = Path(masks_dir), Path(out_dir)
    model.eval()
    results = []
    for path in find_mask_files(root):
        masks, spacing = read_masks(path, default_spacing)
        results.append(
            process_masks(model, masks, spacing, path.relative_to(root), path, out_dir, smooth, max_overlays)
        )
    summary = write_tables(results, out_dir)
    if wandb_run is not None:
        log_overlays(wandb_run, results, max_overlays)
    return summary


def _indices_table(views: dict[str, dict[str, dict]], path: Path) -> dict[str, float]:
    rows, before_ef, after_ef, reference_ef = [], [], [], []
    for patient, by_view in sorted(views.items()):
        spacings = {view: entry["spacing"] for view, entry in by_view.items()}
        results = []
        for which in (0, 1):
            ed, es = {}, {}
            for view, entry in by_view.items():
                if "ed" in entry and "es" in entry:
                    ed[view], es[view] = entry["ed"][which], entry["es"][which]
            results.append(clinical_indices(ed, es, spacings) if ed else None)
        if results[0] is None:
            continue
        cfg_path = next((e["cfg"] for e in by_view.values() if Path(e["cfg"]).is_file()), None)
        reference = _number(cfg_path, read_info_cfg(cfg_path), "EF", "LVef") if cfg_path else math.nan
        rows.append([patient, results[1]["method"], results[1]["views"], reference,
                     results[0]["edv"], results[0]["esv"], results[0]["ef"],
                     results[1]["edv"], results[1]["esv"], results[1]["ef"]])  # fmt: skip
        before_ef.append(results[0]["ef"])
        after_ef.append(results[1]["ef"])
        reference_ef.append(reference)
    write_csv(path, ["patient", "method", "views", "ef_reference", "edv_before", "esv_before", "ef_before",
                     "edv_after", "esv_after", "ef_after"], rows)  # fmt: skip
    before, after = agreement(before_ef, reference_ef), agreement(after_ef, reference_ef)
    return {f"ef_{key}_before": value for key, value in before.items()} | {
        f"ef_{key}_after": value for key, value in after.items()
    }


def reconstruction_dice(model, masks: np.ndarray) -> np.ndarray:
    """``(N, 3)`` Dice of the VAE's reconstructions of ``masks`` (at the VAE's size)."""
    return dice_per_class(model.decode(model.encode(masks)).cpu().numpy(), masks)
