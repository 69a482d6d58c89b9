"""Train-on-synthetic vs train-on-real (TSTR) for EchoDiffusion on the echo phantom: does a synthetic EchoNet-layout
dataset teach an EF regressor as much as the real videos it was made from?

1. A CAMUS-layout phantom (2CH, ``--patients`` patients, 75 % TRAIN / 25 % TEST) is written by the phantom's writer.
2. EchoDiffusion (the network of configs/diffusion/phantom.yaml, EF-conditioned, flow matching) is fitted on the
   TRAIN clips (``--diffusion-steps``): 8 frames of 32 px from ED.
3. ``trainer.predict`` exports the synthetic EchoNet-Dynamic dataset through the module's writer, privacy filter on:
   ``--samples-per-map`` videos per TRAIN map, each asked for its patient's EF (``--requested-ef source``) or a uniform
   draw in [20, 80] (``uniform``).
4. The real clips (the same frames the diffusion model saw, TRAIN and TEST) are written in the same EchoNet layout, so
   both regressors read identical formats; the real TRAIN share is as large as the synthetic set (``--real-train``).
5. The project's ``EFRegressor`` (TinyVideoEncoder, or ``--encoder r2plus1d``) is fitted on each training set for
   ``--ef-epochs`` and tested on the real TEST clips, beside the mean predictor and the phantom's anatomy-free EF
   shortcut (``datamodules.phantom.shortcuts.ef_baselines``: ridge on global statistics, fitted on the real TRAIN).

    PYTHONPATH=. python benchmarks/diffusion_tstr.py                       # default CPU run (see the table below)
    PYTHONPATH=. python benchmarks/diffusion_tstr.py --patients 200 --diffusion-steps 4000 --ef-epochs 60 \\
        --samples-per-map 2 --out runs/tstr                                   # bigger (GPU: add --accelerator gpu)

Measured so far: only a smoke run of the whole chain (``--patients 8 --diffusion-steps 2 --ef-epochs 1``: 6 TRAIN
maps, 6 synthetic vs 6 real videos, 2 TEST clips; every regressor at the mean predictor, 13.5 EF points; 126 s on
the loaded shared 2-core box, 104 s of it generation). The default run (48 patients, 600 diffusion steps, 30 EF
epochs) has not been timed or measured yet: the session that wrote this script ran out of CPU time (issue 13).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch

from datamodules.camus import CamusDataModule
from datamodules.echonet_dynamic import EchoNetDynamicDataModule
from datamodules.phantom.camus_writer import write_camus_dataset
from datamodules.phantom.echonet_writer import FILELIST_COLUMNS, write_avi
from datamodules.phantom.shortcuts import ef_baselines, learned_ef
from echo_modules.common.module import write_csv
from echo_modules.diffusion import EchoDiffusion, SpadeUNet3D
from echo_modules.diffusion.export import to_uint8

SIZE, FRAMES, PERIOD = 32, 8, 2


def diffusion_model(lr: float) -> EchoDiffusion:
    """configs/diffusion/phantom.yaml's model."""
    network = SpadeUNet3D(base_channels=16, channel_mults=(1, 2), spade_hidden=16, frame_embed_dim=8, heads=2,
                          ef_conditioning=True)  # fmt: skip
    return EchoDiffusion(network, objective="flow", sampler="heun", num_sampling_steps=8, guidance_scale=1.0,
                         ef_guidance_scale=3.0, map_drop_prob=0.2, ef_drop_prob=0.2, ema_decay=0.99,
                         optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0))  # fmt: skip


def write_real_clips(datamodule: CamusDataModule, records: list, out: Path, split: str) -> int:
    """The DataModule's clips of ``records`` (what the diffusion model saw) into an EchoNet-layout folder as ``split``
    (appended to its FileList.csv); returns how many."""
    videos = out / "Videos"
    videos.mkdir(parents=True, exist_ok=True)
    mean, std = float(datamodule.norm_mean), float(datamodule.norm_std)
    rows = []
    for batch in datamodule._eval_loader(records):
        batch = datamodule.on_after_batch_transfer(batch, 0)
        for video, ef, fps, name in zip(batch["video"], batch["ef"], batch["fps"], batch["filename"]):
            frames = to_uint8(video, mean, std)
            stem = f"real_{Path(str(name)).stem}"
            write_avi(videos / f"{stem}.avi", frames, float(fps) / PERIOD)
            rows.append([stem, float(ef), "", "", SIZE, SIZE, float(fps) / PERIOD, len(frames), split])
    _append_file_list(out, rows)
    return len(rows)


def _append_file_list(out: Path, rows: list[list]) -> None:
    path = out / "FileList.csv"
    if path.is_file():
        import pandas as pd

        old = pd.read_csv(path)[list(FILELIST_COLUMNS)].fillna("").values.tolist()
        rows = old + rows
    write_csv(path, list(FILELIST_COLUMNS), rows)


def copy_synthetic(synthetic: Path, out: Path) -> int:
    """The exported synthetic TRAIN/VAL videos into ``out`` (EchoNet layout), returns how many."""
    import pandas as pd

    (out / "Videos").mkdir(parents=True, exist_ok=True)
    files = pd.read_csv(synthetic / "FileList.csv")
    for name in files["FileName"]:
        (out / "Videos" / f"{name}.avi").write_bytes((synthetic / "Videos" / f"{name}.avi").read_bytes())
    _append_file_list(out, files[list(FILELIST_COLUMNS)].fillna("").values.tolist())
    return len(files)


def fit_and_test_ef_regressor(data_dir: Path, run: Path, args: argparse.Namespace) -> dict:
    from echo_modules import EFRegressor
    from echo_modules.common import R2Plus1D18, TinyVideoEncoder

    L.seed_everything(args.seed)
    encoder = R2Plus1D18(pretrained=False) if args.encoder == "r2plus1d" else TinyVideoEncoder(1, width=16, depth=3)
    model = EFRegressor(encoder, optimizer=partial(torch.optim.AdamW, lr=args.ef_lr))
    datamodule = EchoNetDynamicDataModule(str(data_dir), frame_size=SIZE, channels=3 if args.encoder == "r2plus1d"
                                          else 1, clip_length=FRAMES, period=1, batch_size=8, num_workers=0,
                                          cache_dir=str(run / "cache"))  # fmt: skip
    trainer = L.Trainer(max_epochs=args.ef_epochs, accelerator=args.accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(run), check_val_every_n_epoch=max(1, args.ef_epochs))  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    summary = json.loads(next(run.rglob("test_summary.json")).read_text())
    return {"test_mae": summary["test_mae"], "videos": summary["videos"], "train": len(datamodule.records["TRAIN"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=48)
    parser.add_argument("--diffusion-steps", type=int, default=600)
    parser.add_argument("--diffusion-lr", type=float, default=2e-3)
    parser.add_argument("--samples-per-map", type=int, default=1)
    parser.add_argument("--requested-ef", choices=("source", "uniform"), default="source")
    parser.add_argument("--ef-epochs", type=int, default=30)
    parser.add_argument("--ef-lr", type=float, default=3e-3)
    parser.add_argument("--encoder", choices=("tiny", "r2plus1d"), default="tiny")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="diffusion_tstr_"))
    started = time.time()
    seconds = {}

    camus = write_camus_dataset(
        out / "CAMUS", args.patients, seed=args.seed, size=48, split_fractions=(0.75, 0.0, 0.25)
    )
    datamodule = CamusDataModule(str(camus), task="synthesis", views="2CH", frame_size=SIZE, clip_length=FRAMES,
                                 period=PERIOD, channels=1, batch_size=8, num_workers=0, cache_dir=str(out / "cache"),
                                 predict_split="TRAIN")  # fmt: skip
    L.seed_everything(args.seed)
    model = diffusion_model(args.diffusion_lr)
    trainer = L.Trainer(max_steps=args.diffusion_steps, accelerator=args.accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(out / "diffusion"))  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    seconds["diffusion_fit"] = time.time() - started

    synthetic = out / "synthetic"
    model.hparams.update(synthetic_dir=str(synthetic), samples_per_map=args.samples_per_map, privacy_filter=True,
                         predict_ef=None, predict_ef_range=(20.0, 80.0) if args.requested_ef == "uniform" else None,
                         ef_scorer="lv_area", val_fraction=0.1)  # fmt: skip
    model.eval()
    tic = time.time()
    L.Trainer(accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(out / "predict")).predict(
        model, datamodule=datamodule, return_predictions=False)  # fmt: skip
    seconds["generate"] = time.time() - tic
    export = json.loads((synthetic / "synthesis_summary.json").read_text())

    # the two training sets beside the same real TEST clips, both in EchoNet layout
    synthetic_set, real_set = out / "tstr_synthetic", out / "tstr_real"
    synthetic_videos = copy_synthetic(synthetic, synthetic_set)
    train, test = datamodule.records["TRAIN"], datamodule.records["TEST"]
    write_real_clips(datamodule, test, synthetic_set, "TEST")
    real_size = min(synthetic_videos, len(train))  # as many real training videos as synthetic ones (at most all)
    real_val = max(1, round(0.1 * real_size))
    write_real_clips(datamodule, train[: real_size - real_val], real_set, "TRAIN")
    write_real_clips(datamodule, train[real_size - real_val : real_size], real_set, "VAL")
    write_real_clips(datamodule, test, real_set, "TEST")

    tic = time.time()
    on_synthetic = fit_and_test_ef_regressor(synthetic_set, out / "ef_on_synthetic", args)
    on_real = fit_and_test_ef_regressor(real_set, out / "ef_on_real", args)
    seconds["ef_regressors"] = time.time() - tic
    baselines = ef_baselines(real_set, fit_splits=("TRAIN", "VAL"), eval_split="TEST", size=SIZE)
    result = {
        "train_maps": len(train),
        "real_videos": real_size,
        "synthetic_videos": synthetic_videos,
        "privacy_rejected": export["rejected_by_privacy_filter"],
        "privacy_dropped": export["dropped_after_max_attempts"],
        "requested_vs_measured_ef_mae": export.get("ef_mae_requested_vs_measured", math.nan),
        "test_videos": on_real["videos"],
        "mae_train_on_synthetic": on_synthetic["test_mae"],
        "mae_train_on_real": on_real["test_mae"],
        "mae_mean_predictor": baselines["mean_mae"],
        "mae_shortcut": baselines["shortcut_mae"],
        "synthetic_learned": learned_ef(on_synthetic["test_mae"], baselines),
        "real_learned": learned_ef(on_real["test_mae"], baselines),
        "seconds": {k: round(v, 1) for k, v in seconds.items()} | {"total": round(time.time() - started, 1)},
    }
    print_table(result, args)
    (out / "tstr_result.json").write_text(json.dumps(result, indent=2))
    return result


def print_table(result: dict, args: argparse.Namespace) -> None:
    print(f"\nTSTR on the phantom: {result['train_maps']} TRAIN maps; {result['synthetic_videos']} synthetic videos vs "
          f"{result['real_videos']} real ones (privacy filter: {result['privacy_rejected']} rejected, "
          f"{result['privacy_dropped']} dropped; requested vs LV-area-measured EF MAE "
          f"{result['requested_vs_measured_ef_mae']:.1f}), {result['test_videos']} real TEST clips; diffusion "
          f"{args.diffusion_steps} steps, EFRegressor ({args.encoder}) {args.ef_epochs} epochs")  # fmt: skip
    print(f"{'EF regressor trained on':<36}{'test MAE (EF points)':>22}")
    for name, key in (("synthetic (TSTR)", "mae_train_on_synthetic"), ("real, same size (TRTR)", "mae_train_on_real"),
                      ("mean predictor (real TRAIN mean)", "mae_mean_predictor"),
                      ("anatomy-free shortcut (real TRAIN)", "mae_shortcut")):  # fmt: skip
        print(f"{name:<36}{result[key]:>22.2f}")
    parity = result["mae_train_on_synthetic"] <= 1.1 * result["mae_train_on_real"]
    print(f"learned (MAE < 0.75 x the stronger of mean predictor and shortcut): synthetic {result['synthetic_learned']},"
          f" real {result['real_learned']}; synthetic within 10 % of train-on-real: {parity}")  # fmt: skip
    print(f"seconds: {result['seconds']}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    np.set_printoptions(precision=3)
    main()
