"""EFRegressor in real Trainer runs on the phantom: it learns, DDP evaluates every video once, bf16 runs,
a killed fit resumes to the same result, W&B writes an offline run, predict writes a CSV."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from datamodules.phantom.shortcuts import learned_ef
from tests.helpers import check_ddp_test_and_predict, run_echolab, tiny_ef_config, write_config

pytestmark = pytest.mark.slow


def metrics_table(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")


def test_learns_ef_well_below_the_shortcut_and_the_mean(phantom_echonet_train, echonet_train_baselines, tmp_path):
    """Test EF MAE well below both the mean predictor and the anatomy-free shortcut on the same TEST split; the fit
    stops once validation is clearly ahead of both on VAL; an untrained model fails the same check."""
    run_dir = tmp_path / "run"
    epochs = 15
    config = tiny_ef_config(
        phantom_echonet_train,
        run_dir,
        **{
            "trainer.max_epochs": epochs,
            "data.init_args.frame_size": 48,
            "data.init_args.clip_length": 16,
            "data.init_args.batch_size": 8,
            "data.init_args.num_eval_clips": 4,
        },
    )
    config["model"]["init_args"]["encoder"]["init_args"].update(width=16, depth=4)
    config["model"]["init_args"]["optimizer"]["init_args"]["lr"] = 1.0e-3
    config["model"]["init_args"]["scheduler"] = {
        "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "init_args": {"T_max": epochs},
    }
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(run_dir / "checkpoints"), "filename": "best", "monitor": "val/mae"},
        },
        {
            "class_path": "lightning.pytorch.callbacks.EarlyStopping",
            "init_args": {
                "monitor": "val/mae",
                "stopping_threshold": 0.6 * echonet_train_baselines["VAL"]["strongest_mae"],
                "patience": 1000,
            },
        },
    ]
    path = write_config(tmp_path / "fit.yaml", config)
    fit = run_echolab("fit", "--config", str(path))
    assert fit.returncode == 0, fit.stderr[-3000:]
    test = run_echolab("test", "--config", str(path), "--ckpt_path", str(run_dir / "checkpoints" / "best.ckpt"))
    assert test.returncode == 0, test.stderr[-3000:]
    summary = json.loads((run_dir / "logs" / "version_0" / "test_summary.json").read_text())
    baselines = echonet_train_baselines["TEST"]
    report = {"model": summary, "baselines": baselines}
    assert summary["mean_predictor_mae"] == pytest.approx(baselines["mean_mae"], abs=0.01), report  # the same split
    assert learned_ef(summary["test_mae"], baselines), report  # well below the mean predictor and the shortcut
    assert (run_dir / "logs" / "version_0" / "figures" / "test_ef_agreement.png").is_file()
    # the control: the same check on the untrained model (no checkpoint) fails
    untrained_dir = tmp_path / "untrained"
    control = write_config(tmp_path / "untrained.yaml", tiny_ef_config(phantom_echonet_train, untrained_dir) | {
        "data": config["data"], "model": config["model"]})  # fmt: skip
    assert run_echolab("test", "--config", str(control)).returncode == 0
    untrained = json.loads((untrained_dir / "logs" / "version_0" / "test_summary.json").read_text())
    assert not learned_ef(untrained["test_mae"], baselines), untrained


def test_ddp_two_processes_validates_every_video_once(phantom_echonet, tmp_path):
    run_dir = tmp_path / "ddp"
    config = tiny_ef_config(phantom_echonet, run_dir, **{"trainer.max_epochs": 1})
    config["trainer"].update(strategy="ddp", devices=2)
    config["trainer"]["callbacks"][0]["init_args"] = {"dirpath": str(run_dir / "checkpoints"), "save_last": True}
    path = write_config(tmp_path / "ddp.yaml", config)
    fit = run_echolab("fit", "--config", str(path))
    assert fit.returncode == 0, fit.stderr[-3000:]
    ddp_row = metrics_table(run_dir).dropna(subset=["val/mae"]).iloc[-1]
    files = pd.read_csv(phantom_echonet / "FileList.csv")
    num_val = int((files["Split"] == "VAL").sum())
    assert num_val % 2 == 1  # an odd split: DistributedSampler would duplicate one video
    assert ddp_row["val/num_videos"] == num_val
    # the same checkpoint validated in one process gives the same MAE
    single = tiny_ef_config(phantom_echonet, tmp_path / "single")
    single_path = write_config(tmp_path / "single.yaml", single)
    validate = run_echolab(
        "validate", "--config", str(single_path), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")
    )
    assert validate.returncode == 0, validate.stderr[-3000:]
    single_row = metrics_table(tmp_path / "single").dropna(subset=["val/mae"]).iloc[-1]
    assert single_row["val/mae"] == pytest.approx(ddp_row["val/mae"], rel=1e-5)
    check_ddp_test_and_predict(path, run_dir / "checkpoints" / "last.ckpt", run_dir, phantom_echonet)


def test_bf16_mixed_cpu_fit_runs(phantom_echonet, tmp_path):
    run_dir = tmp_path / "bf16"
    config = tiny_ef_config(phantom_echonet, run_dir, **{"trainer.max_epochs": 1})
    config["trainer"].update(precision="bf16-mixed", limit_train_batches=3, limit_val_batches=2)
    fit = run_echolab("fit", "--config", str(write_config(tmp_path / "bf16.yaml", config)))
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert metrics_table(run_dir)["val/mae"].notna().any()


def test_killed_fit_resumes_to_identical_result(phantom_echonet, tmp_path):
    results = {}
    for name in ("uninterrupted", "killed"):
        run_dir = tmp_path / name
        config = tiny_ef_config(phantom_echonet, run_dir, **{"trainer.max_epochs": 2})
        config["data"]["init_args"]["cache_dir"] = str(tmp_path / "cache")
        config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 1
        config["trainer"]["callbacks"][0]["init_args"]["save_top_k"] = 1
        config["trainer"]["limit_train_batches"] = 5  # of the 10 an epoch holds: a smaller fit, the same check
        if name == "killed":  # SIGKILLed at step 8 of 2 epochs x 5 steps: the last checkpoint is mid-epoch 1
            config["trainer"]["callbacks"].append({"class_path": "tests.helpers.KillAtStep", "init_args": {"step": 8}})
        path = write_config(tmp_path / f"{name}.yaml", config)
        first = run_echolab("fit", "--config", str(path))
        if name == "killed":
            assert first.returncode != 0
            checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
            assert checkpoint["global_step"] == 8 and checkpoint["epoch"] == 1
            del config["trainer"]["callbacks"][1]
            write_config(path, config)
            resumed = run_echolab("fit", "--config", str(path), "--ckpt_path", "last")
            assert resumed.returncode == 0, resumed.stderr[-3000:]
        else:
            assert first.returncode == 0, first.stderr[-3000:]
        final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        results[name] = final
    a, b = results["uninterrupted"], results["killed"]
    assert a["global_step"] == b["global_step"] == 10
    for key in a["state_dict"]:
        assert torch.allclose(a["state_dict"][key].float(), b["state_dict"][key].float(), atol=1e-6), key
    val_a = metrics_table(tmp_path / "uninterrupted").dropna(subset=["val/mae"])["val/mae"].iloc[-1]
    val_b = metrics_table(tmp_path / "killed").dropna(subset=["val/mae"])["val/mae"].iloc[-1]
    assert val_a == pytest.approx(val_b, abs=1e-6)


def test_wandb_offline_run_has_metrics(phantom_echonet, tmp_path):
    run_dir = tmp_path / "wandb_run"
    config = tiny_ef_config(phantom_echonet, run_dir, **{"trainer.max_epochs": 1})
    config["trainer"].update(limit_train_batches=3, limit_val_batches=2)
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "echolab-tests", "save_dir": str(run_dir)},
    }
    fit = run_echolab("fit", "--config", str(write_config(tmp_path / "wandb.yaml", config)))
    assert fit.returncode == 0, fit.stderr[-3000:]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = b"".join(path.read_bytes() for path in runs[0].glob("run-*.wandb"))  # what `wandb sync` uploads
    assert b"val/mae" in records and b"train/loss" in records and b"val/num_videos" in records


def test_predict_writes_csv(phantom_echonet, tmp_path):
    run_dir = tmp_path / "predict"
    config = tiny_ef_config(phantom_echonet, run_dir, **{"trainer.max_epochs": 1})
    config["trainer"].update(limit_train_batches=3, limit_val_batches=1)  # a checkpoint at step 3 is all predict needs
    path = write_config(tmp_path / "p.yaml", config)
    assert run_echolab("fit", "--config", str(path)).returncode == 0
    out = tmp_path / "predictions.csv"
    result = run_echolab(
        "predict",
        "--config",
        str(path),
        "--ckpt_path",
        str(run_dir / "checkpoints" / "last.ckpt"),
        "--model.init_args.predictions_csv",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out)
    files = pd.read_csv(phantom_echonet / "FileList.csv")
    assert list(table.columns) == ["FileName", "EF_pred", "EF_clip_std", "num_clips", "EF_true"]  # as CoReEcho's
    assert sorted(table["FileName"]) == sorted(files.loc[files["Split"] == "TEST", "FileName"])
    assert table["EF_pred"].between(0, 100).all()
