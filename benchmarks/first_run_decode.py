"""First-run decode rate: filling the decoded-video cache serially (as before) vs with a process pool.

A phantom EchoNet-Dynamic dataset is written once (``--videos`` MJPEG AVIs of ``--size`` pixels, 64-112 frames each).
Each row builds a fresh cache with ``EchoNetDynamicDataModule(decode_workers=W).prepare_data()``: W = 0 decodes in the
main process, one video after the other (what every first run did before); W >= 2 decodes in a pool of W processes
(``datamodules.cache.fill_cache``). Rows are interleaved over ``--repeats`` rounds; the table shows the median rate and
the speed-up over serial. The rate includes the pool's start-up, so small sets understate the gain.

    python benchmarks/first_run_decode.py                 # 120 videos, serial vs 2 processes (about a minute)
    python benchmarks/first_run_decode.py --videos 500 --workers 0 2 4 --size 112
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from datamodules.echonet_dynamic import EchoNetDynamicDataModule  # noqa: E402
from datamodules.phantom.echonet_writer import write_echonet_dataset  # noqa: E402


def decode_seconds(data_dir: Path, cache_dir: Path, workers: int, backend: str) -> float:
    """Seconds to fill a fresh cache of every video of ``data_dir`` with ``workers`` decode processes."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    module = EchoNetDynamicDataModule(
        str(data_dir), cache_dir=str(cache_dir), num_workers=0, decode_workers=workers, video_backend=backend
    )
    module._selected_records()  # scan the CSVs outside the timed part: only decoding is measured
    started = time.perf_counter()
    module.prepare_data()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=120, help="phantom videos (the issue's size: 500)")
    parser.add_argument("--size", type=int, default=32, help="frame size of the phantom videos")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="decode processes per row (0: serial)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (the median is shown)")
    parser.add_argument("--backend", default="auto", help="video_backend: auto, decord, pyav, opencv")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="echolab-decode-"))
    try:
        started = time.perf_counter()
        data_dir = write_echonet_dataset(work / "EchoNet", args.videos, seed=0, size=args.size)
        count = sum(1 for _ in (data_dir / "Videos").glob("*.avi"))
        print(f"wrote {count} phantom videos in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        seconds: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                seconds[workers].append(decode_seconds(data_dir, work / f"cache-{workers}", workers, args.backend))
        serial = median(seconds[args.workers[0]])
        print(
            f"\n{args.videos} phantom MJPEG videos of {args.size}x{args.size} px (64-112 frames), backend "
            f"{args.backend}, {os.cpu_count()} CPUs, {args.repeats} rounds\n"
        )
        print("| first-run decode | videos/s (median, min-max) | seconds | speed-up |")
        print("|---|---|---|---|")
        for workers in args.workers:
            value = median(seconds[workers])
            rates = [args.videos / s for s in seconds[workers]]
            name = "serial, main process (before)" if workers == 0 else f"process pool, decode_workers={workers}"
            print(
                f"| {name} | {args.videos / value:.1f} ({min(rates):.1f}-{max(rates):.1f}) | {value:.1f} | "
                f"{serial / value:.2f}x |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
