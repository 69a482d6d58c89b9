"""What a model must beat on the echo phantom: the mean predictor and the anatomy-free shortcuts, beside learned runs.

Writes the default (realistic) phantom in the EchoNet-Dynamic, CardiacNet-PAH/ASD and HMC-QU layouts (or reads
existing folders), prints the EF baselines (mean predictor, ridge on global statistics; TEST split and leave-one-out)
and the disease baselines (logistic on 3x3-grid statistics; TEST split and leave-one-out, by patient for HMC-QU's
wall motion), the data's EF and intensity statistics, and the test numbers of any runs given with --run (folders
holding test_summary.json). Targets on the default phantom: EF shortcut MAE >= 0.75 x the mean predictor's; disease
shortcut AUROC <= 0.75 for every variant (PAH, ASD, wall motion).

    python benchmarks/phantom_shortcuts.py        # quick: 96 EchoNet videos, 60 per CardiacNet subset, 100 HMC-QU
    python benchmarks/phantom_shortcuts.py --num-videos 160 --num-disease 100 --num-hmcqu 300
    python benchmarks/phantom_shortcuts.py --echonet data/phantom_echonet --run runs/quickstart_stage2 --no-disease
    python benchmarks/phantom_shortcuts.py --disease-only --subsets ASD --num-disease 120   # one disease only

Measured, ASD (CardiacNet-ASD layout), before / after the ASD became a graded shunt defect with right-heart volume
overload (test AUROC / leave-one-out AUROC): ``--disease-only --subsets ASD`` (60 videos, seed 0) 0.44 / 0.37 before,
0.56 / 0.47 after; ``--num-disease 120 --seed 1`` 0.38 / 0.46 before, 0.49 / 0.55 after. The shortcut rises a little
(the larger right heart moves more grey mass inside the 3 x 3 grid's cells) and stays under the 0.75 target.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.phantom.cardiacnet_writer import write_cardiacnet_dataset  # noqa: E402
from datamodules.phantom.echonet_writer import write_echonet_dataset  # noqa: E402
from datamodules.phantom.hmcqu_writer import write_hmcqu_dataset  # noqa: E402
from datamodules.phantom.shortcuts import (  # noqa: E402
    _read_avi,
    disease_baselines,
    ef_baselines,
    hmcqu_disease_baselines,
    learned_ef,
)


def echonet_statistics(data_dir: Path, videos: int = 20) -> dict:
    """EF distribution of FileList.csv and grey-level statistics of the first ``videos`` videos (all frames)."""
    files = pd.read_csv(data_dir / "FileList.csv")
    pixels = []
    for name in files["FileName"][:videos]:
        frames, _, _ = _read_avi(data_dir / "Videos" / f"{name}.avi", 112, 10_000)
        pixels.append(frames.astype(np.float32).ravel())
    grey = np.concatenate(pixels)
    return {
        "ef_mean": files["EF"].mean(),
        "ef_sd": files["EF"].std(),
        "ef_skew": float(stats.skew(files["EF"])),
        "ef_min": files["EF"].min(),
        "ef_max": files["EF"].max(),
        "edv_ml": files["EDV"].mean(),
        "esv_ml": files["ESV"].mean(),
        "corr_edv_ef": float(np.corrcoef(files["EDV"], files["EF"])[0, 1]),
        "fps": f"{files['FPS'].min():g}-{files['FPS'].max():g}",
        "frames": f"{files['NumberOfFrames'].min()}-{files['NumberOfFrames'].max()}",
        "grey_mean": float(grey.mean()),
        "grey_sd": float(grey.std()),
    }


def _latest_summary(run: Path) -> Path | None:
    """The newest test_summary.json under a run folder (its logger versions), if any."""
    found = list(Path(run).rglob("test_summary.json"))
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-videos", type=int, default=96, help="EchoNet-layout videos to write")
    parser.add_argument("--num-disease", type=int, default=60, help="videos per CardiacNet subset to write")
    parser.add_argument("--num-hmcqu", type=int, default=100, help="HMC-QU-layout videos (wall motion) to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=None, help="cap on the EchoNet video lengths")
    parser.add_argument("--echonet", type=Path, default=None, help="use this EchoNet-layout folder instead")
    parser.add_argument("--cardiacnet", type=Path, default=None, help="use this CardiacNet folder instead")
    parser.add_argument("--hmcqu", type=Path, default=None, help="use this HMC-QU folder instead")
    parser.add_argument("--run", type=Path, action="append", default=[], help="run folder(s) with test_summary.json")
    parser.add_argument("--no-disease", action="store_true", help="EF baselines only (no CardiacNet data)")
    parser.add_argument("--disease-only", action="store_true", help="disease baselines only (no EchoNet data)")
    parser.add_argument(
        "--subsets", nargs="+", default=["PAH", "ASD", "HMC-QU"], choices=["PAH", "ASD", "HMC-QU"],
        help="which disease datasets to write and score",
    )  # fmt: skip
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if not args.disease_only:
            ef_section(args, scratch)
        if not args.no_disease:
            disease_section(args, scratch)


def ef_section(args: argparse.Namespace, scratch: Path) -> None:
    """The EF baselines on an EchoNet-layout phantom (written to ``scratch`` unless ``--echonet`` is given)."""
    echonet = args.echonet
    if echonet is None:
        start = time.perf_counter()
        echonet = write_echonet_dataset(
            scratch / "echonet", args.num_videos, seed=args.seed, max_frames=args.max_frames
        )
        print(f"wrote {args.num_videos} EchoNet-layout videos in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    ef = ef_baselines(echonet)
    seconds = time.perf_counter() - start
    facts = echonet_statistics(echonet)
    print(f"\nEchoNet layout: {echonet}")
    print(
        f"  EF {facts['ef_mean']:.1f} +- {facts['ef_sd']:.1f} (skew {facts['ef_skew']:+.2f}, "
        f"{facts['ef_min']:.1f}-{facts['ef_max']:.1f}); EDV {facts['edv_ml']:.0f} mL, ESV {facts['esv_ml']:.0f} mL, "
        f"corr(EDV, EF) {facts['corr_edv_ef']:+.2f}; FPS {facts['fps']}, frames {facts['frames']}; "
        f"grey {facts['grey_mean']:.1f} +- {facts['grey_sd']:.1f}"
    )
    print("  (EchoNet-Dynamic: EF 55.7 +- 12.4, left-skewed; grey 31.8 +- 49.7; FPS 22-106; 28-1002 frames)")
    print(f"\n  {'EF predictor':<44}{'TEST MAE':>10}{'/ mean':>8}{'LOO MAE':>10}{'/ mean':>8}")
    print(f"  {'mean predictor (TRAIN mean)':<44}{ef['mean_mae']:>10.2f}{1:>8.2f}{ef['mean_loo_mae']:>10.2f}{1:>8.2f}")
    print(
        f"  {'shortcut (ridge, global statistics)':<44}{ef['shortcut_mae']:>10.2f}{ef['ratio']:>8.2f}"
        f"{ef['shortcut_loo_mae']:>10.2f}{ef['loo_ratio']:>8.2f}   ({seconds:.1f} s)"
    )
    for run in args.run:
        summary_path = _latest_summary(run)
        if summary_path is None:
            print(f"  {str(run):<44}  (no test_summary.json)")
            continue
        summary = json.loads(summary_path.read_text())
        if "test_mae" in summary:
            ratio = summary["test_mae"] / ef["mean_mae"]
            versus = summary["test_mae"] / ef["shortcut_mae"]
            verdict = "beats" if learned_ef(summary["test_mae"], ef) else "does NOT beat"
            print(
                f"  {'learned: ' + str(run):<44}{summary['test_mae']:>10.2f}{ratio:>8.2f}"
                f"   ({versus:.2f} x the shortcut's TEST MAE: {verdict} 0.75 x the stronger baseline)"
            )
    target = "met" if min(ef["ratio"], ef["loo_ratio"]) >= 0.75 else "NOT met"
    print(f"  target shortcut / mean >= 0.75 (TEST {ef['ratio']:.2f}, LOO {ef['loo_ratio']:.2f}): {target}")


def disease_section(args: argparse.Namespace, scratch: Path) -> None:
    """The disease shortcut on CardiacNet-layout (PAH, ASD) and HMC-QU-layout phantoms (``--subsets``)."""
    print(f"\n  {'disease shortcut (logistic, 3x3 grid)':<44}{'TEST AUROC':>12}{'LOO AUROC':>11}")
    rows = []
    for subset in [s for s in ("PAH", "ASD") if s in args.subsets]:
        root = args.cardiacnet
        if root is None:
            start = time.perf_counter()
            root = write_cardiacnet_dataset(scratch / f"cardiacnet_{subset}", args.num_disease, args.seed, subset)
            written = time.perf_counter() - start
        elif not (root / f"CardiacNet-{subset}").is_dir():
            continue
        else:
            written = 0.0
        result = disease_baselines(root, subset=subset)
        rows.append((f"CardiacNet-{subset} ({result['num_videos']} videos)", result, written))
    if "HMC-QU" in args.subsets:
        root, written = args.hmcqu, 0.0
        if root is None:
            start = time.perf_counter()
            root = write_hmcqu_dataset(scratch / "hmcqu", args.num_hmcqu, args.seed)
            written = time.perf_counter() - start
        result = hmcqu_disease_baselines(root)
        rows.append((f"HMC-QU wall motion ({result['num_videos']} v, {result['num_patients']} p)", result, written))
    for label, result, written in rows:
        worst = max(result["shortcut_auroc"], result["shortcut_loo_auroc"])
        print(
            f"  {label:<44}"
            f"{result['shortcut_auroc']:>12.2f}{result['shortcut_loo_auroc']:>11.2f}"
            f"   target <= 0.75: {'met' if worst <= 0.75 else 'NOT met'}"
            + (f"   (written in {written:.0f} s)" if written else "")
        )
    for run in args.run:
        summary_path = _latest_summary(run)
        if summary_path is not None and "auroc" in (summary := json.loads(summary_path.read_text())):
            print(f"  {'learned: ' + str(run):<44}{summary['auroc']:>12.2f}")


if __name__ == "__main__":
    main()
