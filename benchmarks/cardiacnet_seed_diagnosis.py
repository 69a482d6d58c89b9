"""Why one CardiacNet seed scores lower: diagnosis of the rows ``cardiacnet_ablation.py --save-dir DIR`` saved.

For each saved row (``<row>_seed<k>.pt`` / ``.json``):

- which videos flip: the fraction of normal test videos each PAH test video outranks (its share of the AUROC),
  split at the PAH test videos' median phantom severity (``PhantomTruth.csv``), for the FIFO-bank score at 2 and 8
  clips per video;
- bank contents, per generator: test and train AUROC of the bank score from the FIFO centroids and from centroids
  re-estimated with the final generators over 8 clips of every training video, the class-centroid gap and the
  FIFO-to-refit drift, both over the mean within-class variance;
- the training curve the row saved (test bank AUROC every ``--curve-every`` epochs, inter-class OT cost, used codes).

    python benchmarks/cardiacnet_ablation.py --rows full untrained --seeds 0 1 2 --protocols --save-dir DIR \\
        --data-dir PHANTOM/CardiacNet
    python benchmarks/cardiacnet_seed_diagnosis.py --save-dir DIR --data-dir PHANTOM/CardiacNet

Measured (session 4, default PAH phantom, seeds 0 / 1 / 2): the numbers are in cardiacnet_ablation.py's docstring.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import cardiacnet_ablation as ablation  # noqa: E402

GENERATORS = ("normal_to_abnormal", "abnormal_to_normal")


def load_row(stem: Path):
    """The CardiacNet a ``--save-dir`` row saved (its row's config changes applied), in eval mode."""
    name = stem.name.split("_seed")[0].replace("_", " ")
    args = ablation.phantom_model_args(32)
    if name == "untrained":
        for key in ("generator_optimizer", "discriminator_optimizer"):
            args[key] = {"init_args": {"lr": 0.0}}
    model = ablation.build_cardiacnet(ablation.with_changes(args, ablation.ROWS.get(name, {})))
    model.load_state_dict(torch.load(stem.with_suffix(".pt"), weights_only=True))
    return model.eval()


def flips_by_severity(result: dict, severity: np.ndarray) -> dict[str, tuple[float, float]]:
    """Mean share of normal videos outranked by mild and by marked PAH videos, for each saved bank score."""
    labels, out = np.array(result["labels"]), {}
    severities = severity[labels == 1]
    mild = severities < np.median(severities)
    for kind in ("fifo_2", "fifo_8"):
        scores = np.array(result["video_scores"][kind])
        wins = np.array([(x > scores[labels == 0]).mean() for x in scores[labels == 1]])
        out[kind] = (float(wins[mild].mean()), float(wins[~mild].mean()))
    return out


def bank_contents(model, datamodule) -> dict[str, float]:
    datamodule.num_eval_clips = 8
    train = ablation.bank_rows(model, datamodule._eval_loader(datamodule.records["TRAIN"]), datamodule)
    test = ablation.bank_rows(model, datamodule._eval_loader(datamodule.records["TEST"]), datamodule)
    clip_labels = train["label"][train["owner"]]
    out = {}
    for name in GENERATORS:
        rows = train[name]
        fifo = (model.banks[name][0].centroid(), model.banks[name][1].centroid())
        refit = (rows[clip_labels == 0].mean(0), rows[clip_labels == 1].mean(0))
        within = 0.5 * (rows[clip_labels == 0].var(0).mean() + rows[clip_labels == 1].var(0).mean())
        for kind, centroids in (("fifo", fifo), ("refit", refit)):
            for split, values in (("test", test), ("train", train)):
                score = ablation.centroid_bank_score(values, {name: centroids})
                out[f"{name} {kind} {split} auroc"] = ablation.auroc(score, values["label"].numpy())
            out[f"{name} {kind} gap/within"] = float((centroids[0] - centroids[1]).square().mean() / within)
        drift = sum((f - r).square().mean() for f, r in zip(fifo, refit)) / 2
        out[f"{name} fifo-refit drift/within"] = float(drift / within)
    refit = {
        name: (train[name][clip_labels == 0].mean(0), train[name][clip_labels == 1].mean(0)) for name in GENERATORS
    }
    for split, values in (("test", test), ("train", train)):
        score = ablation.centroid_bank_score(values, refit)
        out[f"both generators refit {split} auroc"] = ablation.auroc(score, values["label"].numpy())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save-dir", type=Path, required=True, help="cardiacnet_ablation.py's --save-dir")
    parser.add_argument("--data-dir", type=Path, required=True, help="the phantom those rows were fitted on")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    truth_file = next(args.data_dir.rglob("PhantomTruth.csv"))
    truth = {row["Patient"]: float(row["Severity"]) for row in csv.DictReader(truth_file.open())}
    with tempfile.TemporaryDirectory() as tmp:
        datamodule = ablation.phantom_datamodule(args.data_dir, "PAH", 32, Path(tmp) / "cache")
        key = lambda record: f"{Path(record.path).parent.name}/{Path(record.path).name.split('_')[0]}"  # noqa: E731
        severity = np.array([truth[key(record)] for record in datamodule.records["TEST"]])
        for stem in sorted(p.with_suffix("") for p in args.save_dir.glob("*.pt")):
            result = json.loads(stem.with_suffix(".json").read_text())
            print(f"\n{stem.name}: test AUROC {result['protocol_auroc']}")
            for kind, (mild, marked) in flips_by_severity(result, severity).items():
                print(f"  {kind}: mild PAH (severity < median) {mild:.2f}, marked {marked:.2f}")
            for name, value in bank_contents(load_row(stem), datamodule).items():
                print(f"  {name}: {value:.3f}")
            for row in result.get("curve", []):
                if "test_auroc_bank" in row:
                    codes = row.get("train/used_codes_to_normal"), row.get("train/used_codes_to_abnormal")
                    print(f"  epoch {row['epoch']}: test bank AUROC {row['test_auroc_bank']:.3f}, OT cost "
                          f"{row.get('train/ot_cost', float('nan')):.3f}, used codes {codes}")  # fmt: skip


if __name__ == "__main__":
    main()
