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
CPU time per clip (this process's threads plus the loader workers, read from ``/proc``) is shown beside it: on a
machine shared with other jobs the wall-clock numbers swing, the work done per clip much less.
Approaches are measured in interleaved rounds (``--repeats``) and the table shows the median and the range, so a
slow spell of a shared machine does not land on one approach only. Each loader is made fresh per run and torn down
after it. Peak RSS comes from ``resource.getrusage`` (main process; largest finished child, i.e. a loader worker).

    python benchmarks/data_loading.py [--num-videos 64] [--frames 128] [--workers 0 2] [--batches 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from datamodules.echonet_dynamic import EchoNetDynamicDataModule  # noqa: E402
from datamodules.phantom.echonet_writer import write_echonet_dataset  # noqa: E402


@dataclass(frozen=True)
class Measurement:
    """One run of one approach."""

    rate: float  # items (clips or frames) per second, wall clock
    cpu_per_item: float  # CPU seconds per item, this process and its loader workers


@dataclass
class Row:
    """One line of the result table: an approach's runs and the reference's (None when it is the reference)."""

    approach: str
    workers: str
    unit: str  # "clip" or "frame"
    runs: list[Measurement]
    reference: list[Measurement] | None
    setup_s: float | None  # one-time cost before the first epoch
    detail: str


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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process from ``/proc`` (0 where there is no ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(worker_pids: Sequence[int]) -> float:
    """CPU seconds of this process (all threads) plus the given loader workers."""
    return time.process_time() + sum(process_cpu_seconds(pid) for pid in worker_pids)


def time_loader(
    make_loader: Callable[[], DataLoader], batches: int, finish: Callable[[dict, int], dict] | None = None
) -> Measurement:
    """Clips/s and CPU seconds per clip over ``batches`` batches after one untimed warm-up batch, cycling epochs.

    CPU time counts this process and the loader's workers, so it shows the work per clip even when other processes
    compete for the CPUs (wall-clock throughput then drops, CPU per clip much less). The loader is made here and torn
    down before returning, so no worker of it keeps prefetching while the next loader is measured.
    ``finish`` is the DataModule's ``on_after_batch_transfer`` (uint8 -> normalised float clips), timed here on the
    CPU although in training it runs on the accelerator: our rows include all the work the reference does.
    """
    loader, iterator = make_loader(), None
    epoch, clips, timed, start, cpu_start, pids = 0, 0, -1, 0.0, 0.0, []
    try:
        while timed < batches:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            iterator, empty = iter(loader), True
            for batch in iterator:
                empty = False
                if finish is not None:
                    batch = finish(batch, 0)
                if timed == -1:  # the warm-up batch (worker start-up, first file opens) is not timed
                    pids = [worker.pid for worker in getattr(iterator, "_workers", [])]
                    start, cpu_start = time.perf_counter(), cpu_seconds(pids)
                else:
                    clips += len(batch["video"] if isinstance(batch, dict) else batch[0])
                timed += 1
                if timed == batches:
                    break
            if empty:
                raise RuntimeError("the loader yields no batches: use more videos or a smaller batch size")
            epoch += 1
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu_start
        return Measurement(clips / elapsed, cpu / clips)
    finally:
        del iterator, loader  # shuts the workers down (persistent ones included)
        gc.collect()


def reference_loader(dataset: ReferenceEchoDataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      drop_last=len(dataset) > batch_size, persistent_workers=workers > 0)  # fmt: skip


def make_module(data_dir: Path, cache_dir: Path, args: argparse.Namespace, workers: int,
                decode_cache: bool) -> EchoNetDynamicDataModule:  # fmt: skip
    module = EchoNetDynamicDataModule(
        str(data_dir), clip_length=args.clip_length, period=args.period, batch_size=args.batch_size,
        num_workers=workers, decode_cache=decode_cache, cache_dir=str(cache_dir), seed=args.seed,
    )  # fmt: skip
    module.prepare_data()
    module.setup("fit")
    return module


def decode_rate(paths: Sequence[Path], decode: Callable[[Path], np.ndarray]) -> Measurement:
    """Frames per second (and CPU seconds per frame) decoding whole videos, after one untimed video."""
    decode(paths[0])
    start, cpu_start, frames = time.perf_counter(), time.process_time(), 0
    for path in paths:
        frames += len(decode(path))
    return Measurement(frames / (time.perf_counter() - start), (time.process_time() - cpu_start) / frames)


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

CACHED = "EchoLab, decoded uint8 cache (default), normalised on the CPU"
CACHED_LOADER = "EchoLab, decoded uint8 cache, loader only (normalisation runs on the accelerator)"
DIRECT = "EchoLab, `decode_cache=False` (decord reads the clip's frames)"
REFERENCE = "Reference: OpenCV decodes the whole video, float32, then clip (echonet/dynamic)"
DECORD = "Raw decode, decord `get_batch` (whole videos)"
OPENCV = "Raw decode, OpenCV `read()` (whole videos)"


def build_caches(data_dir: Path, out_dir: Path, args: argparse.Namespace) -> tuple[dict[bool, Path], dict[bool, float]]:
    """Cold ``prepare_data`` + ``setup`` (decode/validate every video, mean/std) for both cache modes, timed."""
    cache_dirs = {True: out_dir / "cache", False: out_dir / "manifest-only"}
    seconds = {}
    for decode_cache, cache_dir in cache_dirs.items():
        start = time.perf_counter()
        make_module(data_dir, cache_dir, args, 0, decode_cache)
        seconds[decode_cache] = time.perf_counter() - start
    return cache_dirs, seconds


def run(args: argparse.Namespace, out_dir: Path) -> tuple[list[Row], str]:
    start = time.perf_counter()
    data_dir = write_dataset(out_dir / "echonet", args.num_videos, args.frames, args.seed)
    write_s = time.perf_counter() - start
    cache_dirs, setup_s = build_caches(data_dir, out_dir, args)

    loaders: dict[tuple[str, int], Callable[[], DataLoader]] = {}
    finishers: dict[tuple[str, int], Callable[[dict, int], dict]] = {}
    for workers in args.workers:
        modules = {mode: make_module(data_dir, cache_dirs[mode], args, workers, mode) for mode in (True, False)}
        train = modules[True].records["TRAIN"]
        reference = ReferenceEchoDataset([r.path for r in train], [r.ef for r in train], modules[True].norm_mean,
                                         modules[True].norm_std, args.clip_length, args.period)  # fmt: skip
        loaders[REFERENCE, workers] = partial(reference_loader, reference, args.batch_size, workers)
        loaders[CACHED, workers] = modules[True].train_dataloader
        loaders[CACHED_LOADER, workers] = modules[True].train_dataloader
        loaders[DIRECT, workers] = modules[False].train_dataloader
        finishers[CACHED, workers] = modules[True].on_after_batch_transfer
        finishers[DIRECT, workers] = modules[False].on_after_batch_transfer
    paths = sorted((data_dir / "Videos").glob("*.avi"))

    runs: dict[tuple[str, int | None], list[Measurement]] = defaultdict(list)
    for _ in range(args.repeats):  # interleaved rounds: a slow spell of the machine hits every approach alike
        for key, make_loader in loaders.items():
            runs[key].append(time_loader(make_loader, args.batches, finishers.get(key)))
        runs[OPENCV, None].append(decode_rate(paths, decode_opencv))
        runs[DECORD, None].append(decode_rate(paths, decode_decord))

    rows: list[Row] = []
    over = f"{args.batches} batches x {args.repeats} runs"
    for workers in args.workers:
        reference = runs[REFERENCE, workers]
        rows += [
            Row(CACHED, str(workers), "clip", runs[CACHED, workers], reference, setup_s[True], over),
            Row(CACHED_LOADER, str(workers), "clip", runs[CACHED_LOADER, workers], reference, setup_s[True], over),
            Row(DIRECT, str(workers), "clip", runs[DIRECT, workers], reference, setup_s[False], over),
            Row(REFERENCE, str(workers), "clip", reference, None, None, over),
        ]
    videos = f"{len(paths)} videos x {args.repeats} runs"
    rows.append(Row(DECORD, "-", "frame", runs[DECORD, None], runs[OPENCV, None], None, videos))
    rows.append(Row(OPENCV, "-", "frame", runs[OPENCV, None], None, None, videos))
    context = (
        f"{args.num_videos} phantom videos ({len(train)} in TRAIN), {args.frames} frames each, 112x112 (written in "
        f"{write_s:.1f} s); clip {args.clip_length} x period {args.period}, batch {args.batch_size}; "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} (1 in each worker). Throughput: median "
        f"(min-max) of {args.repeats} interleaved runs, each after 1 untimed warm-up batch."
    )
    return rows, context


def format_number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def format_row(row: Row) -> str:
    """Medians over the runs; the throughput's min-max in brackets; ratios against the reference's medians."""
    rates = [run.rate for run in row.runs]
    cpu_ms = median(run.cpu_per_item for run in row.runs) * 1000
    spread = f"({format_number(min(rates))}-{format_number(max(rates))})"
    throughput = f"{format_number(median(rates))} {row.unit}s/s {spread}"
    if row.reference is None:
        speedup, cpu_ratio = "1.00x (reference)", ""
    else:
        speedup = f"{median(rates) / median(run.rate for run in row.reference):.2f}x"
        cpu_ratio = f" ({median(run.cpu_per_item for run in row.reference) * 1000 / cpu_ms:.2f}x)"
    setup = "-" if row.setup_s is None else f"{row.setup_s:.1f} s"
    cpu = f"{format_number(cpu_ms)} ms{cpu_ratio}"
    cells = [row.approach, row.workers, throughput, speedup, cpu, setup, row.detail]
    return "| " + " | ".join(cells) + " |"


def format_table(rows: Sequence[Row]) -> str:
    header = [
        "| Approach | Workers | Throughput, median (min-max) | Speed-up vs reference | CPU per item (reference / this) "
        "| One-time setup | Measured over |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    return "\n".join(header + [format_row(row) for row in rows])


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
    parser.add_argument("--batches", type=int, default=8, help="timed batches per run (after 1 warm-up batch)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per approach (the median is shown)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write the phantom (default: a temp dir)")
    args = parser.parse_args(argv)
    if min(args.batches, args.repeats, args.num_videos) < 1:
        parser.error("--batches, --repeats and --num-videos must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata's StatefulDataLoader, every loader
    temporary = args.out_dir is None
    out_dir = Path(tempfile.mkdtemp(prefix="echolab-bench-")) if temporary else args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        start, load_start = time.perf_counter(), os.getloadavg()[0]
        rows, context = run(args, out_dir)
        print(f"\nData loading, EchoNet-Dynamic layout: {context}\n")
        print(format_table(rows))
        own, children = peak_rss_mib()
        load_end = os.getloadavg()[0]
        busy = max(load_start, load_end) > (os.cpu_count() or 1)
        print(
            f"\nPeak RSS: main process {own:.0f} MiB, largest worker {children:.0f} MiB. Total time "
            f"{time.perf_counter() - start:.0f} s. 1-min load average {load_start:.2f} at start, {load_end:.2f} at "
            "end" + (" (more than the CPUs: other processes competed, expect noisy numbers)." if busy else ".")
        )
    finally:
        if temporary:
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
