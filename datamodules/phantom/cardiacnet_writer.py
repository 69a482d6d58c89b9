"""Write a phantom dataset in the CardiacNet release layout (CardiacNet-PAH or CardiacNet-ASD).

    out_dir/CardiacNet-PAH/PAH/NNN_image.nii.gz       abnormal videos: the simulator's ``dilated_rv`` (PAH-like)
    out_dir/CardiacNet-PAH/Non-PAH/NNN_image.nii.gz   normal videos
    out_dir/CardiacNet-ASD/{ASD,Non-ASD}/...          abnormal = ``septal_gap`` (ASD-like)
    .../NNN_label.nii.gz       per-frame labels (W, H, T): 0 background, 1 LV, 2 myocardium, 3 LA
    .../NNN_abnormal.nii.gz    (W, H) uint8, 1 where the planted disease lives (all 0 for normal videos); phantom only

Videos are 4-chamber views of varying length and frame size, each placed at a random offset on a wider black canvas
(as the release's ~720p frames hold the sector inside a black border), stored as NIfTI (W, H, T) uint8. A normal and an
abnormal video differ only by the planted disease: the parameter distributions are the same. Numbering restarts at 001
in each class folder, as in the release. Everything is a function of the seed.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.nifti import write_nifti
from datamodules.phantom.simulator import sample_params, simulate_video

DISEASE_OF_SUBSET = {"PAH": "dilated_rv", "ASD": "septal_gap"}


def _on_canvas(frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Frames placed at a random offset on a black canvas ~1.2-1.5x wider and ~1.05-1.2x taller; the offset."""
    size = frames.shape[1]
    height = int(size * rng.uniform(1.05, 1.2))
    width = int(size * rng.uniform(1.2, 1.5))
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    canvas = np.zeros((frames.shape[0], height, width), frames.dtype)
    canvas[:, top : top + size, left : left + size] = frames
    return canvas, (top, left)


def write_cardiacnet_dataset(
    out_dir: str | Path,
    num_videos: int,
    seed: int = 0,
    subset: Literal["PAH", "ASD"] = "PAH",
    abnormal_fraction: float = 0.5,
    size_range: tuple[int, int] = (160, 256),
    num_frames_range: tuple[int, int] = (24, 64),
    fps_range: tuple[float, float] = (30.0, 60.0),
    severity_range: tuple[float, float] = (0.1, 1.0),
) -> Path:
    """Write ``num_videos`` phantom videos of ``subset`` (PAH or ASD) in the CardiacNet layout; returns ``out_dir``.

    abnormal_fraction: share of videos with the subset's disease (the rest are normal hearts).
    size_range / num_frames_range: per-video square sector size in pixels and length in frames (both vary).
    severity_range: the disease's severity is drawn over it, mild cases the most common (`sample_params`).
    """
    if subset not in DISEASE_OF_SUBSET:
        raise ValueError(f"subset must be 'PAH' or 'ASD', got {subset!r}")
    if num_videos < 2:
        raise ValueError(f"num_videos must be >= 2 (one per class), got {num_videos}")
    out_dir = Path(out_dir)
    root = out_dir / f"CardiacNet-{subset}"
    class_dirs = {1: root / subset, 0: root / f"Non-{subset}"}
    for folder in class_dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    num_abnormal = min(max(int(round(abnormal_fraction * num_videos)), 1), num_videos - 1)
    labels = np.random.default_rng([seed, 0xCA4D]).permutation(
        np.repeat([1, 0], [num_abnormal, num_videos - num_abnormal])
    )
    counters = {0: 0, 1: 0}
    truth_rows = []
    for index, label in enumerate(labels.tolist()):
        rng = np.random.default_rng([seed, index])
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        params = sample_params(
            rng,
            size=size,
            view="4CH",
            disease=DISEASE_OF_SUBSET[subset] if label else "normal",
            fps_range=fps_range,
            num_frames_range=num_frames_range,
            severity_range=severity_range,
        )
        shortest = int(np.ceil(params.systole_fraction * params.cycle_s * params.fps)) + 3  # an ED and its ES fit
        if params.num_frames < shortest + 2:
            params = replace(params, phase=0.0, num_frames=max(params.num_frames, shortest))
        video = simulate_video(params, int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0]))
        frames, (top, left) = _on_canvas(video.frames, rng)
        masks = np.zeros_like(frames)
        masks[:, top : top + size, left : left + size] = video.masks
        region = np.zeros(frames.shape[1:], np.uint8)
        region[top : top + size, left : left + size] = video.abnormal_region
        counters[label] += 1
        stem = f"{counters[label]:03d}"
        folder = class_dirs[label]
        write_nifti(folder / f"{stem}_image.nii.gz", frames)
        write_nifti(folder / f"{stem}_label.nii.gz", masks)
        write_nifti(folder / f"{stem}_abnormal.nii.gz", region)
        truth_rows.append(
            (
                f"{folder.name}/{stem}",
                label,
                params.disease,
                round(params.severity, 4) if label else 0.0,
                len(frames),
                size,
                round(video.ef, 4),
                video.fps,
            )  # fmt: skip
        )
    with open(root / "PhantomTruth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Patient", "Label", "Disease", "Severity", "NumberOfFrames", "SectorSize", "EF", "FPS"])
        writer.writerows(truth_rows)
    return out_dir
