"""Write a phantom dataset in the EchoNet-Dynamic release layout, quirks included.

    out_dir/Videos/<FileName>.avi    MJPEG AVI, grey repeated to 3 channels, size x size
    out_dir/FileList.csv             FileName (no extension), EF, ESV, EDV, FrameHeight, FrameWidth, FPS,
                                     NumberOfFrames, Split (TRAIN / VAL / TEST)
    out_dir/VolumeTracings.csv       FileName (with .avi), X1, Y1, X2, Y2, Frame: per video an ED and an ES block of
                                     21 rows (long axis, then 20 chords), the two blocks in random order
    out_dir/PhantomTruth.csv         not part of the release: per video the simulator's ED/ES frames, target EF,
                                     heart rate, view and disease, so tests can check what readers infer

EF, EDV and ESV are the method-of-discs values of the written tracings, so a reader that recomputes them from
VolumeTracings.csv gets the FileList values back. Everything is a function of the seed.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datamodules.phantom.simulator import PhantomParams, PhantomVideo, sample_params, simulate_video

FILELIST_COLUMNS = ("FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
TRUTH_COLUMNS = ("FileName", "Split", "EF", "EDFrame", "ESFrame", "NumberOfFrames", "FPS", "TargetEF", "HeartRate",
                 "View", "Disease", "Severity", "DepthMM")  # fmt: skip
SPLITS = ("TRAIN", "VAL", "TEST")


@dataclass(frozen=True)
class PhantomSpec:
    """One video of a planned phantom dataset: its name, split, parameters and rendering seed."""

    file_name: str  # without extension, EchoNet style: 0X + 16 hex digits
    split: str
    params: PhantomParams
    seed: int
    es_block_first: bool  # order of the traced frames in VolumeTracings.csv

    def simulate(self) -> PhantomVideo:
        return simulate_video(self.params, self.seed)


def phantom_file_name(seed: int, index: int) -> str:
    """EchoNet-style hashed name, a deterministic function of (dataset seed, video index)."""
    digest = hashlib.blake2b(f"echolab-phantom:{seed}:{index}".encode(), digest_size=8).hexdigest().upper()
    return f"0X{digest}"


def assign_splits(num_videos: int, split_fractions: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    """TRAIN/VAL/TEST per video in the given proportions (each non-empty split gets a video when there are enough)."""
    fractions = np.asarray(split_fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test): {split_fractions}")
    fractions = fractions / fractions.sum()
    counts = np.floor(fractions * num_videos).astype(int)
    for i in np.argsort(-(fractions * num_videos - counts))[: num_videos - counts.sum()]:
        counts[i] += 1
    for i in range(3):  # steal from the largest split so a requested split is never empty
        if fractions[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    labels = np.repeat(np.arange(3), counts)
    return [SPLITS[i] for i in labels[rng.permutation(num_videos)]]


def plan_echonet_dataset(
    num_videos: int,
    seed: int = 0,
    size: int = 112,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    num_frames_range: tuple[int, int] | None = None,
    ef_range: tuple[float, float] = (20.0, 80.0),
    fps_range: tuple[float, float] | None = None,
    heart_rate_range: tuple[float, float] = (50.0, 110.0),
    view: str = "4CH",
    disease: str = "normal",
    ef_distribution: str = "echonet",
    max_frames: int | None = None,
    severity_range: tuple[float, float] = (0.1, 1.0),
) -> list[PhantomSpec]:
    """The videos `write_echonet_dataset` writes for these arguments, without rendering them (see
    `simulator.sample_params` for what the None defaults draw: EchoNet-like frame rates and lengths)."""
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    splits = assign_splits(num_videos, split_fractions, np.random.default_rng([seed, 0x5EED]))
    specs = []
    for index in range(num_videos):
        rng = np.random.default_rng([seed, index])
        params = sample_params(
            rng,
            size=size,
            view=view,
            disease=disease,
            ef_range=ef_range,
            heart_rate_range=heart_rate_range,
            fps_range=fps_range,
            num_frames_range=num_frames_range,
            ef_distribution=ef_distribution,
            severity_range=severity_range,
            max_frames=max_frames,
        )
        video_seed = int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])
        es_first = bool(rng.random() < 0.5)
        specs.append(PhantomSpec(phantom_file_name(seed, index), splits[index], params, video_seed, es_first))
    if len({spec.file_name for spec in specs}) != num_videos:
        raise RuntimeError("phantom file names collided; use another seed")
    return specs


def write_avi(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Grey (T, H, W) uint8 frames -> MJPEG AVI with the grey repeated to 3 channels, as in the EchoNet release."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (width, height), True)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot open an MJPEG AVI writer for {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def write_echonet_dataset(
    out_dir: str | Path,
    num_videos: int,
    seed: int = 0,
    size: int = 112,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    num_frames_range: tuple[int, int] | None = None,
    ef_range: tuple[float, float] = (20.0, 80.0),
    fps_range: tuple[float, float] | None = None,
    ef_distribution: str = "echonet",
    max_frames: int | None = None,
) -> Path:
    """Write `num_videos` phantom videos in the EchoNet-Dynamic layout under `out_dir`; returns `out_dir`.

    By default the videos are drawn like the real release: EF and volumes like EchoNet-Dynamic (``ef_distribution``
    ``echonet``; ``uniform`` over ``ef_range`` and ``camus`` are the alternatives), frame rates mostly 50 (22-106)
    and lengths of 28-1002 frames. ``max_frames`` caps the lengths (for quick CPU runs); ``num_frames_range`` /
    ``fps_range`` draw lengths / frame rates uniformly instead."""
    out_dir = Path(out_dir)
    videos_dir = out_dir / "Videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    specs = plan_echonet_dataset(
        num_videos,
        seed,
        size,
        split_fractions,
        num_frames_range,
        ef_range,
        fps_range,
        ef_distribution=ef_distribution,
        max_frames=max_frames,
    )
    file_rows, tracing_rows, truth_rows = [], [], []
    for spec in specs:
        video = spec.simulate()
        write_avi(videos_dir / f"{spec.file_name}.avi", video.frames, video.fps)
        num_frames, height, width = video.frames.shape
        file_rows.append(
            (spec.file_name, video.ef, video.esv, video.edv, height, width, _number(video.fps), num_frames, spec.split)
        )
        params = spec.params
        truth_rows.append((spec.file_name, spec.split, video.ef, video.ed_index, video.es_index, num_frames,
                           _number(video.fps), params.ef, params.heart_rate, params.view, params.disease,
                           params.severity if params.disease != "normal" else 0.0, params.depth_mm))  # fmt: skip
        blocks = [(video.ed_index, video.ed_tracing), (video.es_index, video.es_tracing)]
        if spec.es_block_first:
            blocks.reverse()
        for frame, tracing in blocks:
            for x1, y1, x2, y2 in tracing.tolist():
                tracing_rows.append((f"{spec.file_name}.avi", x1, y1, x2, y2, int(frame)))
    _write_csv(out_dir / "FileList.csv", FILELIST_COLUMNS, file_rows)
    _write_csv(out_dir / "VolumeTracings.csv", TRACING_COLUMNS, tracing_rows)
    _write_csv(out_dir / "PhantomTruth.csv", TRUTH_COLUMNS, truth_rows)
    return out_dir


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    # csv writes floats with repr(): they read back bit-identical
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
