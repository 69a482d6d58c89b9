"""Can a model learn EF on the default (realistic) phantom? Mean predictor, shortcut and a trained model, one TEST split.

Writes the default EchoNet-layout phantom (EF distributed like EchoNet-Dynamic, realistic probe pose and every other
nuisance; only the video lengths are capped, ``--max-frames``, for CPU time), computes the mean predictor and the
anatomy-free shortcut (`datamodules.phantom.shortcuts.ef_baselines`, ridge on global statistics fitted on TRAIN+VAL),
then trains a method through the real CLI (``echolab fit`` with its shipped phantom config, only the schedule and the
input size changed by flags) and tests its best checkpoint (``echolab test``), and prints one table: mean predictor
MAE, shortcut MAE and the model's MAE on the same TEST split, with the commands that reproduce the run.

    python benchmarks/phantom_learnability.py                          # quick CPU budget: 300 videos, EFRegressor
    python benchmarks/phantom_learnability.py --num-videos 400 --epochs 40 --frame-size 64
    python benchmarks/phantom_learnability.py --method coreecho --epochs 20
    python benchmarks/phantom_learnability.py --data data/phantom_echonet --out runs/learnability   # reuse a folder

The default phantom must stay realistic: when a model does not beat the shortcut within a budget, this script says
so with the numbers; it never changes the writer to pass. Measured with the defaults (300 videos capped at 112
frames, EFRegressor width 16 depth 4, 24 epochs at 48 px; 12.8 min wall, 5.3 min CPU on a shared 2-core box), TEST
split of 45 videos: mean predictor 9.06, shortcut 7.98, EFRegressor 5.77 (0.64 x the mean, 0.72 x the shortcut).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.phantom.echonet_writer import write_echonet_dataset  # noqa: E402
from datamodules.phantom.shortcuts import ef_baselines, learned_ef  # noqa: E402

CONFIGS = {"ef_regressor": "ef_regressor/phantom.yaml", "coreecho": "coreecho/phantom.yaml"}


def echolab(*args: str) -> tuple[float, str]:
    """Run ``cli.py`` with ``args``; the wall seconds and the shell command (exits with its stderr on failure)."""
    command = [sys.executable, str(ROOT / "cli.py"), *args]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, shlex.join(["echolab", *args])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=list(CONFIGS), default="ef_regressor")
    parser.add_argument("--num-videos", type=int, default=300, help="default-phantom videos to write")
    parser.add_argument("--size", type=int, default=112, help="written frame size (the EchoNet release: 112)")
    parser.add_argument("--max-frames", type=int, default=112, help="cap on the video lengths (0: uncapped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--frame-size", type=int, default=48, help="input size the model sees")
    parser.add_argument("--width", type=int, default=16, help="TinyVideoEncoder width")
    parser.add_argument("--depth", type=int, default=4, help="TinyVideoEncoder depth")
    parser.add_argument("--lr", type=float, default=None, help="encoder learning rate (default: the config's)")
    parser.add_argument("--data", type=Path, default=None, help="use this EchoNet-layout folder instead of writing")
    parser.add_argument("--out", type=Path, default=None, help="keep the data and the run here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        data = args.data
        if data is None:
            data = work / "phantom_echonet"
            if not (data / "FileList.csv").is_file():
                start = time.perf_counter()
                write_echonet_dataset(
                    data, args.num_videos, seed=args.seed, size=args.size, max_frames=args.max_frames or None
                )
                print(f"wrote {args.num_videos} default-phantom videos ({args.size} px) in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        baselines = ef_baselines(data)
        print(f"EF {baselines['ef_mean']:.1f} +- {baselines['ef_std']:.1f} over {baselines['num_videos']} videos; "
              f"fitted on {baselines['num_fit']}, tested on {baselines['num_test']}", flush=True)  # fmt: skip
        run = work / f"run_{args.method}"
        overrides = [
            "--config", CONFIGS[args.method],
            "--data.init_args.data_dir", str(data),
            "--data.init_args.frame_size", str(args.frame_size),
            "--trainer.default_root_dir", str(run),
            "--trainer.max_epochs", str(args.epochs),
            "--trainer.enable_progress_bar", "false",
            "--model.init_args.scheduler.init_args.T_max", str(args.epochs),
            "--model.init_args.encoder.init_args.width", str(args.width),
            "--model.init_args.encoder.init_args.depth", str(args.depth),
        ]  # fmt: skip
        if args.lr is not None:
            overrides += ["--model.init_args.optimizer.init_args.lr", str(args.lr)]
        fit_seconds, fit_command = echolab("fit", *overrides)
        test_seconds, test_command = echolab("test", *overrides, "--ckpt_path", str(run / "checkpoints" / "best.ckpt"))
        summaries = sorted(run.rglob("test_summary.json"), key=lambda path: path.stat().st_mtime)
        summary = json.loads(summaries[-1].read_text())
        model_mae = float(summary["test_mae"])
        mean_mae, shortcut_mae = baselines["mean_mae"], baselines["shortcut_mae"]
        print(f"\nDefault (realistic) phantom, {baselines['num_videos']} videos, TEST split ({baselines['num_test']}):")
        print(f"  {'EF predictor':<52}{'TEST MAE':>10}{'/ mean':>8}{'/ shortcut':>12}")
        print(f"  {'mean predictor (TRAIN mean)':<52}{mean_mae:>10.2f}{1.0:>8.2f}{mean_mae / shortcut_mae:>12.2f}")
        print(f"  {'shortcut (ridge, global statistics, TRAIN+VAL)':<52}{shortcut_mae:>10.2f}"
              f"{shortcut_mae / mean_mae:>8.2f}{1.0:>12.2f}")  # fmt: skip
        label = f"{args.method} ({args.epochs} ep, {args.frame_size} px, w{args.width} d{args.depth})"
        print(f"  {label:<52}{model_mae:>10.2f}{model_mae / mean_mae:>8.2f}{model_mae / shortcut_mae:>12.2f}")
        if "mean_predictor_mae" in summary:
            print(f"  (the model's own test summary: mean predictor {summary['mean_predictor_mae']:.2f} on its split)")
        beaten = [
            name for name, value in (("mean predictor", mean_mae), ("shortcut", shortcut_mae)) if model_mae < value
        ]
        missed = [name for name in ("mean predictor", "shortcut") if name not in beaten]
        if learned_ef(model_mae, baselines):
            verdict = "learned: well below (< 0.75 x) the stronger of the mean predictor and the shortcut"
        elif beaten:
            verdict = f"below the {' and the '.join(beaten)}" + (f", not the {missed[0]}" if missed else "")
            verdict += ", but not by the learned_ef margin (< 0.75 x the stronger)"
        else:
            verdict = "does NOT beat the mean predictor or the shortcut"
        print(f"  verdict: {verdict}; fit {fit_seconds:.0f} s, test {test_seconds:.0f} s")
        print(f"\n  {fit_command}\n  {test_command}")


if __name__ == "__main__":
    main()
