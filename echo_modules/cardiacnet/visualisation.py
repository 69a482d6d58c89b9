"""CardiacNet outputs a person looks at: abnormality-map videos (input | deformed to normal | map overlay) and the
test figure of examples, and their logging at test (PNG in the run folder, image and browser-playable H.264 videos in
W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

from echo_modules.common.plotting import log_figure
from echo_modules.common.video_logging import write_browser_video


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
    """Write :func:`map_video_frames` by the suffix of ``path``: ``.mp4`` as H.264 (``write_browser_video``: what
    the W&B media panel, a browser, plays), anything else as an MJPEG AVI (OpenCV; the ``predict`` map files)."""
    import cv2

    frames = map_video_frames(inputs, to_normal, maps)
    if path.suffix == ".mp4":
        return write_browser_video(path, frames[..., ::-1], fps=fps)  # BGR -> RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames.shape[2], frames.shape[1]), True)
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
    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switch

    figure = Figure(figsize=(7.5, 2.5 * len(examples)))
    axes = figure.subplots(len(examples), 3, squeeze=False)
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


def log_map_examples(module: Any, examples: list[dict[str, Any]]) -> None:
    """The example figure (PNG in the log dir, image in W&B) and, with a WandbLogger, H.264 map videos. Called on
    every rank with the same (gathered) examples (``log_figure`` resolves the log dir collectively); only rank 0
    writes."""
    if not examples:
        return
    log_figure(module, "test/abnormality_maps", abnormality_figure(examples))
    from lightning.pytorch.loggers import WandbLogger

    trainer = module.trainer
    wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers or not trainer.is_global_zero:
        return
    out = Path(module.run_dir) / "abnormality_maps"
    paths = [
        str(write_map_video(out / f"test_{i}.mp4", e["input"], e["to_normal"], e["maps"]))
        for i, e in enumerate(examples)
    ]
    for logger in wandb_loggers:
        logger.log_video("test/abnormality_map_videos", videos=paths, step=trainer.global_step,
                         caption=[e["name"] for e in examples])  # fmt: skip
