"""CardiacNet outputs a person looks at: abnormality-map videos (input | deformed to normal | map overlay) and the
test figure of examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange


def _to_uint8(frames: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    low = float(np.min(frames)) if low is None else low
    high = float(np.max(frames)) if high is None else high
    return np.clip((frames - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)


def map_video_frames(inputs: np.ndarray, to_normal: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """BGR frames ``(T, H, 3W, 3)``: the input, its deformation to normal, and the map as a JET overlay."""
    import cv2

    low, high = float(np.min(inputs)), float(np.max(inputs))
    grey_in, grey_out = _to_uint8(inputs, low, high), _to_uint8(to_normal, low, high)
    heat = _to_uint8(maps, 0.0, float(np.quantile(maps, 0.995)) if maps.size else 1.0)
    frames = []
    for frame_in, frame_out, frame_heat in zip(grey_in, grey_out, heat):
        colour_in = cv2.cvtColor(frame_in, cv2.COLOR_GRAY2BGR)
        overlay = cv2.addWeighted(colour_in, 0.5, cv2.applyColorMap(frame_heat, cv2.COLORMAP_JET), 0.5, 0)
        frames.append(np.concatenate([colour_in, cv2.cvtColor(frame_out, cv2.COLOR_GRAY2BGR), overlay], 1))
    return np.stack(frames)


def write_map_video(path: Path, inputs: np.ndarray, to_normal: np.ndarray, maps: np.ndarray, fps: float = 8.0) -> Path:
    """Write :func:`map_video_frames` as an AVI (MJPEG) or MP4 (mp4v) by the suffix of ``path``."""
    import cv2

    frames = map_video_frames(inputs, to_normal, maps)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (frames.shape[2], frames.shape[1]), True)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot open a video writer for {path}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def save_video_maps(
    out_dir: Path, name: str, inputs: np.ndarray, to_normal: np.ndarray, maps: np.ndarray, map_format: str
) -> str:
    """Write one video's maps (clips concatenated in time) as ``<name>.avi`` and/or ``<name>.npy``; returns the
    written path(s) joined by ``;``. ``inputs``/``to_normal``/``maps``: ``(clips, T, H, W)``."""
    flat = lambda array: rearrange(array, "n t h w -> (n t) h w")  # noqa: E731
    written = []
    stem = out_dir / name  # names may hold folders (CardiacNet "PAH/001", video-folder relative paths)
    if map_format in ("npy", "both"):
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.save(stem.parent / f"{stem.name}.npy", maps.astype(np.float16))
        written.append(str(stem.parent / f"{stem.name}.npy"))
    if map_format in ("avi", "both"):
        path = stem.parent / f"{stem.name}.avi"
        written.append(str(write_map_video(path, flat(inputs), flat(to_normal), flat(maps))))
    return ";".join(written)


def abnormality_figure(examples: list[dict[str, Any]]):
    """Rows of (input frame, deformed to normal, clip-mean map with the known region outlined)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * len(examples)), squeeze=False)
    for row, example in zip(axes, examples):
        middle = example["input"].shape[0] // 2
        row[0].imshow(example["input"][middle], cmap="gray")
        row[1].imshow(example["to_normal"][middle], cmap="gray")
        row[2].imshow(example["input"].mean(0), cmap="gray")
        row[2].imshow(example["video_map"], cmap="jet", alpha=0.5)
        if example["region"] is not None and example["region"].any():
            row[2].contour(example["region"].astype(float), levels=[0.5], colors="white", linewidths=0.8)
        row[0].set_ylabel(str(example["name"])[:18], fontsize=7)
        for axis, title in zip(row, ("input", "deformed to normal", "abnormality map")):
            axis.set_title(title, fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    return figure
