"""Peak memory of evaluating a long video: every clip in one forward vs chunks of ``eval_chunk_size`` clips.

Issue 9 item 1: real EchoNet-Dynamic has a 1002-frame TEST video; evaluated on every clip (``num_eval_clips: null``)
all its clips went through the encoder in one call, so memory grew with the video's length. The module base now runs
them in chunks (``EchoModule.eval_chunk_size``, default 32). This script writes a phantom EchoNet set whose videos are
``--frames`` long, then runs ``trainer.test`` of an EFRegressor in a fresh process per setting and prints the peak
resident memory (``ru_maxrss``) before and during the test, the test MAE (the same in every row: chunking does not
change results) and the time.

    python benchmarks/eval_memory.py                          # 1000 frames, 32 px, TinyVideoEncoder: quick on a CPU
    python benchmarks/eval_memory.py --frame-size 112 --encoder r2plus1d18 --chunks 8 16   # the issue's setting
    (unchunked R(2+1)D-18 at 112 px needs ~200 MiB per clip: ~190 GiB for ~940 clips; do not add "none" there)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(options: argparse.Namespace) -> None:
    """One measurement (in its own process, so ``ru_maxrss`` is this setting's peak)."""
    import lightning as L

    from datamodules.echonet_dynamic import EchoNetDynamicDataModule
    from echo_modules import EFRegressor
    from echo_modules.common import R2Plus1D18, TinyVideoEncoder

    L.seed_everything(0, verbose=False)
    data = EchoNetDynamicDataModule(
        options.data_dir, clip_length=options.clip_length, period=options.period, frame_size=options.frame_size,
        channels=1 if options.encoder == "tiny" else 3, batch_size=1, eval_batch_size=1, num_workers=0,
        num_eval_clips=None, cache_dir=options.cache_dir,
    )  # fmt: skip
    data.prepare_data()
    data.setup("test")
    encoder = TinyVideoEncoder(1, 8, 3) if options.encoder == "tiny" else R2Plus1D18()
    chunk = None if options.chunk == "none" else int(options.chunk)
    model = EFRegressor(encoder=encoder, eval_chunk_size=chunk)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=options.cache_dir,
    )  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    results = trainer.test(model, data, verbose=False)[0]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clips = sum(len(batch["video"]) for batch in data.test_dataloader())
    print(json.dumps({"before_mib": before, "peak_mib": peak, "mae": results["test/mae"], "seconds": seconds,
                      "clips": clips}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000, help="frames per video (the TEST video is this long)")
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--clip-length", type=int, default=16)
    parser.add_argument("--period", type=int, default=2)
    parser.add_argument("--encoder", choices=["tiny", "r2plus1d18"], default="tiny")
    parser.add_argument("--chunks", nargs="+", default=["none", "64", "16"], help="eval_chunk_size values; none = all")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options)
        return

    from datamodules.phantom.echonet_writer import write_echonet_dataset

    with tempfile.TemporaryDirectory() as folder:
        data_dir = write_echonet_dataset(
            Path(folder) / "EchoNet-long", 3, seed=0, size=max(64, options.frame_size),
            split_fractions=(1 / 3, 1 / 3, 1 / 3), num_frames_range=(options.frames, options.frames),
        )  # fmt: skip
        common = [
            "--data-dir", str(data_dir), "--cache-dir", str(Path(folder) / "cache"), "--frame-size",
            str(options.frame_size), "--clip-length", str(options.clip_length), "--period", str(options.period),
            "--encoder", options.encoder,
        ]  # fmt: skip
        rows = []
        for chunk in options.chunks:
            command = [sys.executable, __file__, "--child", "--chunk", chunk, *common]
            result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if result.returncode != 0:
                sys.exit(f"eval_chunk_size={chunk} failed:\n{result.stderr[-2000:]}")
            rows.append((chunk, json.loads(result.stdout.strip().splitlines()[-1])))
    print(
        f"EFRegressor ({options.encoder}) test on one {options.frames}-frame TEST video, every clip "
        f"({rows[0][1]['clips']} clips of {options.clip_length} x {options.period}, {options.frame_size} px)"
    )
    print(f"{'eval_chunk_size':>16} {'RSS before test':>16} {'peak RSS':>10} {'test MAE':>10} {'seconds':>8}")
    for chunk, row in rows:
        name = "none (one pass)" if chunk == "none" else chunk
        print(
            f"{name:>16} {row['before_mib']:>12.0f} MiB {row['peak_mib']:>6.0f} MiB {row['mae']:>10.4f} "
            f"{row['seconds']:>8.1f}"
        )


if __name__ == "__main__":
    main()
