"""Data-loading throughput: EchoLab's EchoNet-Dynamic loader against the EchoNet-Dynamic reference approach.

What is measured, on one phantom EchoNet-Dynamic dataset written once at the start (same AVI files for every row):

1. ``EchoNetDynamicDataModule`` training loader with the decoded uint8 cache (the default). ``prepare_data`` decodes
   every video once into ``.npy`` files; items then read only their clip's frames from a memory map. The one-time
   cache build (``prepare_data`` + ``setup``, which also computes mean/std) is reported separately.
2. The same module with ``decode_cache=False``: decord decodes only the clip's frames, per item.
3. A reference loader written here after echonet/dynamic (``echonet.utils.loadvideo`` + ``echonet.datasets.Echo``):
   per item, open the AVI with ``cv2.VideoCapture``, decode the *whole* video, convert BGR->RGB, cast to float32,
   normalise the whole video by mean/std, then take a random clip (``clip_length`` frames every ``period``).
4. Raw decode rates, whole videos, frames/s: ``decord.VideoReader.get_batch`` and OpenCV ``read()`` in a loop.

Why: the reference decodes and converts every frame of a video to float for each 32-frame clip, which makes an epoch
decode-bound (EchoNet users report hour-long epochs); the issue asks for our loader to be >= 4x faster.

Each loader runs for a fixed number of timed batches (cycling epochs as needed) after one untimed warm-up batch
(which also absorbs worker start-up), timed with ``time.perf_counter``; throughput is clips per second. The
speed-up column compares a loader with the reference at the same number of workers (decode rows: with OpenCV).

    python benchmarks/data_loading.py [--num-videos 64] [--frames 128] [--workers 0 2] [--batches 16]
"""

from __future__ import annotations

import argparse
import inspect
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from datamodules.echonet_dynamic import EchoNetDynamicDataModule  # noqa: E402
from datamodules.phantom.echonet_writer import write_echonet_dataset  # noqa: E402


@dataclass
class Row:
    """One line of the result table."""

    approach: str
    workers: str
    rate: float  # items per second
    unit: str  # "clips/s" or "frames/s"
    baseline: float | None  # the rate this row is compared with (None: this row is the baseline)
    setup_s: float | None = None  # one-time cost before the first epoch
    detail: str = ""


# ---------------------------------------------------------------- dataset


def write_dataset(out_dir: Path, num_videos: int, frames: int, seed: int) -> Path:
    """Write the phantom EchoNet-Dynamic dataset; fix the frame count when the writer lets us choose it."""
    kwargs: dict = {"seed": seed, "size": 112}
    if "num_frames_range" in inspect.signature(write_echonet_dataset).parameters:
        kwargs["num_frames_range"] = (frames, frames)
    return Path(write_echonet_dataset(out_dir, num_videos, **kwargs))


# ---------------------------------------------------------------- the reference loader (echonet/dynamic style)


def load_video_opencv(path: str | Path) -> np.ndarray:
    """``echonet.utils.loadvideo``: the whole video as uint8 ``(3, F, H, W)`` RGB, decoded with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video = np.zeros((count, height, width, 3), np.uint8)
    for index in range(count):
        ok, frame = capture.read()
        if not ok:
            raise ValueError(f"failed to load frame #{index} of {path}")
        video[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    capture.release()
    return video.transpose((3, 0, 1, 2))


class ReferenceEchoDataset(Dataset):
    """``echonet.datasets.Echo`` (EF target, one random clip): decode all, float32, normalise all, then sample."""

    def __init__(self, paths: Sequence[Path], efs: Sequence[float], mean: float, std: float,
                 clip_length: int, period: int) -> None:  # fmt: skip
        self.paths = list(paths)
        self.efs = list(efs)
        self.mean, self.std = mean, std
        self.clip_length, self.period = clip_length, period

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.float32]:
        video = load_video_opencv(self.paths[index]).astype(np.float32)
        video -= self.mean
        video /= self.std
        channels, frames, height, width = video.shape
        needed = self.clip_length * self.period
        if frames < needed:  # echonet pads short videos with zeros
            video = np.concatenate((video, np.zeros((channels, needed - frames, height, width), video.dtype)), axis=1)
            frames = needed
        start = int(np.random.default_rng().integers(0, frames - (self.clip_length - 1) * self.period))
        clip = video[:, start + self.period * np.arange(self.clip_length)]
        return clip, np.float32(self.efs[index])


# ---------------------------------------------------------------- timing


def time_batches(make_epoch: Callable[[int], Iterable], batches: int) -> tuple[float, int]:
    """Clips per second over ``batches`` batches after one warm-up batch, cycling epochs as needed."""
    epoch, clips, timed, start = 0, 0, -1, 0.0
    while timed < batches:
        empty = True
        for batch in make_epoch(epoch):
            empty = False
            if timed == -1:  # the warm-up batch (worker start-up, first file opens) is not timed
                start = time.perf_counter()
            else:
                clips += len(batch["video"] if isinstance(batch, dict) else batch[0])
            timed += 1
            if timed == batches:
                break
        if empty:
            raise RuntimeError("the loader yields no batches: use more videos or a smaller batch size")
        epoch += 1
    return clips / (time.perf_counter() - start), clips


def ours_epochs(module: EchoNetDynamicDataModule) -> Callable[[int], Iterable]:
    """Epoch iterator for the module's training loader; the loader (and its persistent workers) is made once."""
    loader = module.train_dataloader()

    def epoch(number: int) -> Iterable:
        loader.sampler.set_epoch(number)
        return loader

    return epoch


def reference_epochs(dataset: ReferenceEchoDataset, batch_size: int, workers: int) -> Callable[[int], Iterable]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        drop_last=len(dataset) > batch_size, persistent_workers=workers > 0)  # fmt: skip
    return lambda number: loader


def make_module(data_dir: Path, cache_dir: Path, args: argparse.Namespace, workers: int,
                decode_cache: bool) -> tuple[EchoNetDynamicDataModule, float]:  # fmt: skip
    """A set-up module and the seconds ``prepare_data`` + ``setup`` took (the cache build, on a cold cache)."""
    module = EchoNetDynamicDataModule(
        str(data_dir), clip_length=args.clip_length, period=args.period, batch_size=args.batch_size,
        num_workers=workers, decode_cache=decode_cache, cache_dir=str(cache_dir), seed=args.seed,
    )  # fmt: skip
    start = time.perf_counter()
    module.prepare_data()
    module.setup("fit")
    return module, time.perf_counter() - start


def decode_rate(paths: Sequence[Path], decode: Callable[[Path], np.ndarray]) -> float:
    """Frames per second decoding whole videos (after decoding the first one once, untimed)."""
    decode(paths[0])
    start, frames = time.perf_counter(), 0
    for path in paths:
        frames += len(decode(path))
    return frames / (time.perf_counter() - start)


def decode_decord(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def decode_opencv(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames)


# ---------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace, out_dir: Path) -> tuple[list[Row], str]:
    start = time.perf_counter()
    data_dir = write_dataset(out_dir / "echonet", args.num_videos, args.frames, args.seed)
    write_s = time.perf_counter() - start

    rows: list[Row] = []
    setups: dict[bool, float] = {}
    for workers in args.workers:
        modules = {}
        for decode_cache in (True, False):
            cache_dir = out_dir / ("cache" if decode_cache else "manifest-only")
            modules[decode_cache], seconds = make_module(data_dir, cache_dir, args, workers, decode_cache)
            setups.setdefault(decode_cache, seconds)  # cold build only the first time; later modules reuse it
        train = modules[True].records["TRAIN"]
        reference = ReferenceEchoDataset([r.path for r in train], [r.ef for r in train], modules[True].norm_mean,
                                         modules[True].norm_std, args.clip_length, args.period)  # fmt: skip
        ref_rate, ref_clips = time_batches(reference_epochs(reference, args.batch_size, workers), args.batches)
        cached_rate, cached_clips = time_batches(ours_epochs(modules[True]), args.batches)
        direct_rate, direct_clips = time_batches(ours_epochs(modules[False]), args.batches)
        rows += [
            Row("EchoLab, decoded uint8 cache (default)", str(workers), cached_rate, "clips/s", ref_rate,
                setups[True], f"{cached_clips} clips"),
            Row("EchoLab, `decode_cache=False` (decord, clip frames only)", str(workers), direct_rate, "clips/s",
                ref_rate, setups[False], f"{direct_clips} clips"),
            Row("Reference: OpenCV whole-video decode + float32 (echonet/dynamic)", str(workers), ref_rate, "clips/s",
                None, None, f"{ref_clips} clips"),
        ]  # fmt: skip

    paths = sorted((data_dir / "Videos").glob("*.avi"))
    opencv_rate = decode_rate(paths, decode_opencv)
    decord_rate = decode_rate(paths, decode_decord)
    rows += [
        Row("Raw decode, decord `get_batch` (whole videos)", "-", decord_rate, "frames/s", opencv_rate,
            detail=f"{len(paths)} videos"),
        Row("Raw decode, OpenCV `read()` (whole videos)", "-", opencv_rate, "frames/s", None,
            detail=f"{len(paths)} videos"),
    ]  # fmt: skip
    train_videos = len(modules[True].records["TRAIN"])
    context = (f"{args.num_videos} phantom videos ({train_videos} in TRAIN), {args.frames} frames each, 112x112 "
               f"(written in {write_s:.1f} s); clip {args.clip_length} x period {args.period}, batch {args.batch_size}, "
               f"{args.batches} timed batches after 1 warm-up; torch threads {torch.get_num_threads()}")  # fmt: skip
    return rows, context


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| Approach | Workers | Throughput | Speed-up vs reference | One-time setup | Measured over |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        speedup = "1.00x (reference)" if row.baseline is None else f"{row.rate / row.baseline:.2f}x"
        setup = "-" if row.setup_s is None else f"{row.setup_s:.2f} s"
        rate = f"{row.rate:,.0f}" if row.rate >= 100 else f"{row.rate:.1f}"
        lines.append(f"| {row.approach} | {row.workers} | {rate} {row.unit} | {speedup} | {setup} | {row.detail} |")
    return "\n".join(lines)


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident memory (MiB) of this process and of its largest finished child (the loader workers)."""
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    return own, children


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=128, help="frames per video (when the phantom writer allows)")
    parser.add_argument("--clip-length", type=int, default=32)
    parser.add_argument("--period", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to compare")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per loader (after 1 warm-up batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write the phantom (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.num_videos < 1:
        parser.error("--batches and --num-videos must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    temporary = args.out_dir is None
    out_dir = Path(tempfile.mkdtemp(prefix="echolab-bench-")) if temporary else args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        rows, context = run(args, out_dir)
        print(f"\nData loading, EchoNet-Dynamic layout: {context}\n")
        print(format_table(rows))
        own, children = peak_rss_mib()
        print(f"\nPeak RSS: main process {own:.0f} MiB, largest worker {children:.0f} MiB. "
              f"Total time {time.perf_counter() - start:.0f} s.")  # fmt: skip
    finally:
        if temporary:
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
