"""EF conditioning of EchoDiffusion over seeds: the check of tests/test_diffusion_learning.py (EF 30 vs 70 asked of
every map from the same noise), for the trained model, the EF-permuted control and a constant generator, under two
EF read-outs.

Per seed (the seed of the network's initialisation, the training noise and the read-out regressor's fit; the phantom
data are the test's): the test's recipe (4 hearts x EF 30/70, 8 frames of 32 px from ED, flow matching, Euler-8, EF
guidance 3) is fitted for ``--steps``; the EF-permuted control is the same seed, recipe and steps with
``ef_shuffle`` (each batch's EFs permuted across the batch in training: EF pathways trained, EF uninformative). Both
are asked for EF 30 and 70 from every training map (``trainer.test``), and each sample's EF is read by

- ``lv_area``: the phantom's LV-area change, calibrated to EF on the real training videos;
- ``regressor``: an EFRegressor (TinyVideoEncoder) fitted for ``--regressor-steps`` on 24 other phantom hearts, each at EF 25/40/55/70.

Columns: ``direction`` (maps whose EF-70 sample measures higher than its EF-30 sample, of 8), ``rise`` (mean measured
EF-70 minus EF-30, for +40 asked), ``mae`` (|measured - requested|), ``free`` (MAE of the same model sampled without
an EF), ``constant`` (a generator whose every video measures the mean asked EF: always 20), ``real`` (the read-out's
MAE on the real videos of the 8 maps: its floor), ``pass`` (the test's ``ef_conditioning_passes``).

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 10 python benchmarks/diffusion_ef.py --seeds 0 1 2 --steps 200

Measured (2026-12-01): the multi-seed table has NOT been run to completion yet. The shared 2-core box was at load
8-13 all session (3 helpers + CI): a 1-thread smoke run (``--steps 2 --regressor-steps 2``, one seed) took 1116 s,
and a ``--seeds 1 2 --steps 160 --regressor-steps 300`` run at nice 10 did not finish its first seed in 20 min. The
one measured seed is the test's own fixture (seed 0, torch's default 2 threads, 160 steps, regressor 300 steps on
24 hearts x EF 25/40/55/70), from ``pytest tests/test_diffusion_learning.py -k higher_ef``:

    model        read-out   direction   rise    mae   free  constant  real  pass
    trained      lv_area       8/8      +60.4  11.6   20.0    20.0     5.6   yes
    trained      regressor     8/8      +28.0   8.9   20.0    20.0     7.0   yes
    ef_permuted  lv_area       0/8      -26.9  33.4   21.5    20.0     5.6   no
    ef_permuted  regressor     0/8      -18.2  29.1   20.0    20.0     7.0   no

The permuted control is consistently wrong here (0/8, ef_corr -0.89): its EF pathway trained on uninformative EFs
still maps EF to some motion, and EF guidance 3 amplifies it; its sign is a property of the fit, so over seeds it
may land on the right side of the direction half, which is why the check also asks for closeness.

The test now fits 200 steps (the margin of its denoising-error check was 0.3 % at 160); its fixture there (seed 0,
2 threads, idle box): trained lv_area 8/8, rise +63.6, MAE 12.5; trained regressor 8/8, +36.4, 5.8; EF-permuted
lv_area 0/8, -21.2, 30.6; regressor 0/8, -12.1, 26.0 (constant 20.0; read-outs on the real videos 5.6 / 7.0).

2026-12-02: the test's network now has temporal attention at the coarse level only (``tiny_model``, which this
benchmark imports). Its fixture (seed 0, 2 threads, 200 steps): trained lv_area 8/8, rise +59.1, MAE 10.2; trained
regressor 8/8, +34.4, 5.9; EF-permuted lv_area 1/8, -13.6, 26.8; regressor 0/8, -9.5, 24.7. Seeds 1 and 2 at this
setting (``--seeds 1 2 --steps 200 --threads 2``, idle box, ~6 min per seed):

    seed  model        read-out   direction   rise    mae   free  constant  real  pass
       1  trained      lv_area       8/8      +69.7  14.8   20.0    20.0     5.6   yes
       1  trained      regressor     8/8      +41.6   8.4   20.0    20.0    10.2   yes
       1  ef_permuted  lv_area       0/8      -12.6  26.3   20.8    20.0     5.6   no
       1  ef_permuted  regressor     1/8       -5.5  22.7   20.4    20.0    10.2   no
       2  trained      lv_area       8/8      +80.2  20.1   20.0    20.0     5.6   NO
       2  trained      regressor     8/8      +41.2   5.2   20.0    20.0     8.6   yes
       2  ef_permuted  lv_area       0/8      -21.8  30.9   20.2    20.0     5.6   no
       2  ef_permuted  regressor     0/8      -18.9  29.5   20.0    20.0     8.6   no

Over seeds 0/1/2 the direction is robust (the trained model 8/8 under both read-outs on every seed, the EF-permuted
control 0-1/8 and never passing), but the size is not: on seed 2 the LV-area read-out measures a rise of +80 for +40
asked (EF guidance 3 overshoots), so its MAE 20.1 misses the closeness bar (0.9 x 20 = 18) although the regressor
read-out of the same samples passes (5.2). The test's seed 0 passes both; a calibrated EF magnitude (guidance scale
chosen on validation, or no separate EF guidance) is open (issue 13).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from echo_modules.diffusion.ef_scoring import RegressorEF  # noqa: E402
from tests.test_diffusion_learning import (  # noqa: E402
    ef_conditioning_passes,
    ef_summaries,
    fit,
    fit_ef_regressor,
    synthesis_data,
    tiny_model,
    write_same_hearts_at_two_efs,
)

READOUTS = ("lv_area", "regressor")
COLUMNS = ("direction", "rise", "mae", "free", "constant", "real")


def row(summary: dict) -> dict:
    maps = round(summary["videos"] / 2)
    return {
        "direction": summary["ef_direction"] * maps,
        "rise": summary["ef_rise"],
        "mae": summary["ef_mae"],
        "free": summary["ef_mae_ef_blind"],
        "constant": summary["ef_mae_constant"],
        "real": summary["scorer_mae_real"],
        "pass": ef_conditioning_passes(summary),
    }


def run_seed(seed: int, steps: int, regressor_steps: int, root: Path) -> dict[tuple[str, str], dict]:
    data_dir = write_same_hearts_at_two_efs(root / "CAMUS")
    datamodule = synthesis_data(data_dir, root / "cache")
    models = {}
    for name, options in (("trained", {}), ("ef_permuted", {"ef_shuffle": True})):
        L.seed_everything(seed)
        models[name] = fit(tiny_model(**options), datamodule, steps, root / f"run_{name}")
    regressor = fit_ef_regressor(root, regressor_steps, seed)
    scorers = {
        "lv_area": "lv_area",
        "regressor": RegressorEF.from_model(regressor, datamodule.norm_mean, datamodule.norm_std),
    }
    return {
        (name, readout): row(summary)
        for name, model in models.items()
        for readout, summary in ef_summaries(model, datamodule, scorers, root / "test" / name).items()
    }


def table(results: dict[int, dict[tuple[str, str], dict]]) -> str:
    """One line per seed, model and read-out, then mean +- sd over seeds (pass: how many seeds pass)."""
    header = f"{'seed':>4} {'model':<11} {'read-out':<9} " + " ".join(f"{c:>11}" for c in COLUMNS) + "  pass"
    lines = [header, "-" * len(header)]
    for seed, rows in results.items():
        for (name, readout), values in rows.items():
            numbers = " ".join(f"{values[c]:11.1f}" for c in COLUMNS)
            lines.append(f"{seed:>4} {name:<11} {readout:<9} {numbers}  {'yes' if values['pass'] else 'no'}")
    for key in next(iter(results.values())):
        cells = []
        for column in COLUMNS:
            values = [rows[key][column] for rows in results.values()]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} +- {sd:.1f}".rjust(11))
        passed = sum(rows[key]["pass"] for rows in results.values())
        lines.append(f"{'mean':>4} {key[0]:<11} {key[1]:<9} " + " ".join(cells) + f"  {passed}/{len(results)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="diffusion fit steps (trained and EF-permuted)")
    parser.add_argument("--regressor-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for seed in args.seeds:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            results[seed] = run_seed(seed, args.steps, args.regressor_steps, Path(tmp))
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        print(table({seed: results[seed]}), flush=True)
    print(f"\nsteps {args.steps}, regressor steps {args.regressor_steps}, threads {torch.get_num_threads()}")
    print(table(results))
    if args.out:
        rows = [{"seed": s, "model": k[0], "readout": k[1], **v} for s, r in results.items() for k, v in r.items()]
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
