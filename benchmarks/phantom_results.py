"""The README's results table: each method's shipped phantom config, fitted and tested, beside the cheap baselines.

For every row it writes (once) the phantom dataset the config reads, runs ``echolab fit`` and ``echolab test`` with the
shipped config (only the data folder and the run folder are given), reads ``test_summary.json`` and prints a markdown
table: method, dataset, metric, the model's value, the mean predictor, the phantom's anatomy-free shortcut baseline
(``datamodules.phantom.shortcuts``, when the tree has it) and the command that reproduces the row.

    python benchmarks/phantom_results.py                  # every row (tens of minutes on 2 CPU cores)
    python benchmarks/phantom_results.py --rows ef_regressor coreecho --out runs/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> (method, dataset format, config(s), test checkpoint, metric key in test_summary.json, metric label)
ROWS = {
    "ef_regressor": ("EFRegressor", "echonet", ["ef_regressor/phantom.yaml"], "best", "test_mae", "EF MAE"),
    "coreecho": ("CoReEcho stage 1", "echonet", ["coreecho/phantom.yaml"], "best", "test_mae", "EF MAE"),
    "coreecho_stage2": (
        "CoReEcho stage 2",
        "echonet",
        ["coreecho/phantom.yaml", "coreecho/phantom_stage2.yaml"],
        "best",
        "test_mae",
        "EF MAE",
    ),  # fmt: skip
    "classifier": ("VideoClassifier", "cardiacnet", ["classifier/phantom.yaml"], "best", "auroc", "PAH AUROC"),
    "cardiacnet": ("CardiacNet", "cardiacnet", ["cardiacnet/phantom.yaml"], "best", "test/auroc", "PAH AUROC"),
}
DATASETS = {"echonet": ("phantom EchoNet-Dynamic", 160), "cardiacnet": ("phantom CardiacNet-PAH", 120)}


def echolab(*args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"echolab {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def baselines(kind: str, data_dir: Path) -> tuple[str, str]:
    """(mean predictor, shortcut) as table cells; n/a where the tree has no shortcuts module."""
    try:
        from datamodules.phantom import shortcuts
    except ImportError:
        return ("see test", "n/a")
    if kind == "echonet":
        values = shortcuts.ef_baselines(data_dir)
        return f"{values['mean_mae']:.2f}", f"{values['shortcut_mae']:.2f}"
    values = shortcuts.disease_baselines(data_dir)
    return "0.50", f"{values['shortcut_auroc']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "phantom_results")
    options = parser.parse_args()
    table = [
        "| method | dataset | metric | model | mean predictor | shortcut baseline | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in options.rows:
        method, kind, configs, checkpoint, key, label = ROWS[name]
        dataset, videos = DATASETS[kind]
        data_dir = options.out / f"data_{kind}"
        if not data_dir.exists():
            echolab("phantom", "--format", kind, "--out", str(data_dir), "--num-videos", str(videos), "--seed", "0")
        run = options.out / name
        config_args = [arg for config in configs for arg in ("--config", config)]
        common = [*config_args, "--data.init_args.data_dir", str(data_dir), "--trainer.default_root_dir", str(run)]
        if name == "coreecho_stage2":
            stage1 = options.out / "coreecho" / "checkpoints" / "best.ckpt"
            common += ["--model.init_args.stage1_checkpoint", str(stage1)]
        echolab("fit", *common)
        echolab("test", *common, "--ckpt_path", str(run / "checkpoints" / f"{checkpoint}.ckpt"))
        summaries = sorted((run / "logs").glob("version_*/test_summary.json"), key=lambda p: p.stat().st_mtime)
        summary = json.loads(summaries[-1].read_text())
        mean_cell, shortcut_cell = baselines(kind, data_dir)
        if kind == "echonet" and "mean_predictor_mae" in summary:
            mean_cell = f"{summary['mean_predictor_mae']:.2f}"
        command = f"`echolab fit {' '.join(config_args)}` + `echolab test ... --ckpt_path <run>/checkpoints/best.ckpt`"
        table.append(f"| {method} | {dataset} ({videos}) | {label} | {summary[key]:.3f} | {mean_cell} | "
                     f"{shortcut_cell} | {command} |")  # fmt: skip
        print(table[-1], flush=True)
    print("\n".join(table))


if __name__ == "__main__":
    main()
