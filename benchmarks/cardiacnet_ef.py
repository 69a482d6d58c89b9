"""CardiacNet's EF head on the EchoNet phantom: does it beat the mean predictor and the phantom's EF shortcut, and do
trained generators give it better features than untrained ones?

The EF head is the public evaluation's protocol: a light head (``heads.predict_ef``) on the two generators' *frozen*
encoder features (``heads.feature_grad`` 0: no EF gradient reaches the generators), predicting standardised EF. Rows:

- ``trained``: CardiacNet (configs/cardiacnet/phantom.yaml's model settings, EF head on, normal/abnormal by
  EF < 50 %) trained for ``--epochs``;
- ``untrained generators``: the same run with the generators' learning rate 0 (the heads and discriminators still
  learn at their own rates), so the head reads random-initialised encoders: the control for "the generators'
  features carry EF";
- the training-mean predictor and the phantom's anatomy-free EF shortcut (``datamodules.phantom.shortcuts
  .ef_baselines``: ridge on global intensity / motion statistics, fitted on TRAIN + VAL), on the same TEST split.

EF MAE in EF points on the TEST split (all clips of a video averaged); seeds stated.

    python benchmarks/cardiacnet_ef.py                                # 64 videos, 32 px, 10 epochs, seed 0
    python benchmarks/cardiacnet_ef.py --num-videos 120 --epochs 20 --seeds 0 1
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from benchmarks.cardiacnet_ablation import _eval_batches, build_cardiacnet, fit, phantom_model_args  # noqa: E402

SPLIT = (0.5, 0.1, 0.4)  # train / val / test: 40 % test videos so the MAE is a measurement


def ef_model_args(frame_size: int, head_lr: float, generator_lr: float | None) -> dict[str, Any]:
    """The phantom config's CardiacNet with an EF head on frozen features (generators at ``generator_lr``)."""
    args = phantom_model_args(frame_size)
    args["heads"] = {"predict_ef": True, "lr": head_lr, "feature_grad": 0.0}
    args["evaluation"] = {"score": "head", "map_format": "none"}
    if generator_lr is not None:
        args["generator_optimizer"]["init_args"]["lr"] = generator_lr
    return args


def echonet_datamodule(data_dir: Path, frame_size: int):
    from datamodules.echonet_dynamic import EchoNetDynamicDataModule

    datamodule = EchoNetDynamicDataModule(
        str(data_dir), label_from_ef_below=50, paired=True, clip_length=8, period=2, frame_size=frame_size,
        channels=1, batch_size=4, num_workers=0, num_eval_clips=2,
    )  # fmt: skip
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@torch.no_grad()
def test_ef_mae(model, datamodule) -> float:
    """EF MAE (points) of the model's EF head on the TEST split, clips of a video averaged."""
    from echo_modules.common.module import average_clip_predictions

    model.eval()
    datamodule.setup("test")
    errors = []
    for batch in _eval_batches(datamodule, "test"):
        ef = model.evaluate_clips(batch["video"]).ef
        per_video = average_clip_predictions(ef, batch["clip_owner"], len(batch["ef"]))
        known = torch.isfinite(batch["ef"])
        errors.extend((per_video[known] - batch["ef"][known].float()).abs().tolist())
    return float(np.mean(errors))


def run_row(data_dir: Path, args: argparse.Namespace, seed: int, generator_lr: float | None) -> dict[str, float]:
    import lightning as L

    L.seed_everything(seed, verbose=False)
    model = build_cardiacnet(ef_model_args(args.frame_size, args.head_lr, generator_lr))
    datamodule = echonet_datamodule(data_dir, args.frame_size)
    seconds = fit(model, datamodule, args.epochs, seed)
    return {"mae": test_ef_mae(model, datamodule), "seconds": seconds}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-videos", type=int, default=64)
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from datamodules.phantom.echonet_writer import write_echonet_dataset
    from datamodules.phantom.shortcuts import ef_baselines

    rows: dict[str, list[dict[str, float]]] = {"trained": [], "untrained generators": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_echonet_dataset(
            Path(tmp) / "echonet", args.num_videos, seed=args.data_seed, size=args.frame_size,
            split_fractions=SPLIT, num_frames_range=(20, 32),
        )  # fmt: skip
        baselines = ef_baselines(data_dir)
        print(f"baselines: {baselines}", file=sys.stderr, flush=True)
        for seed in args.seeds:
            for name, generator_lr in (("trained", None), ("untrained generators", 0.0)):
                start = time.perf_counter()
                rows[name].append(run_row(data_dir, args, seed, generator_lr))
                print(f"{name} seed {seed}: {rows[name][-1]} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    def cell(values: list[float]) -> str:
        values = [v for v in values if math.isfinite(v)]
        return f"{values[0]:.2f}" if len(values) == 1 else f"{np.mean(values):.2f} +- {np.std(values):.2f}"

    lines = [
        f"CardiacNet EF head on frozen features, EchoNet phantom ({args.num_videos} videos, split {SPLIT}, "
        f"{args.frame_size} px, 8 frames), {args.epochs} epochs, head lr {args.head_lr}, seeds {args.seeds}",
        "",
        "| row | test EF MAE (points) | fit s |",
        "|---|---:|---:|",
    ]
    for name, results in rows.items():
        lines.append(f"| {name} | {cell([r['mae'] for r in results])} | {cell([r['seconds'] for r in results])} |")
    lines.append(f"| training-mean predictor | {baselines['mean_mae']:.2f} | |")
    lines.append(f"| EF shortcut (ridge on anatomy-free statistics) | {baselines['shortcut_mae']:.2f} | |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
