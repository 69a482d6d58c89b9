"""The echolab command: bad configs fail before any work with one line and exit code 2; phantom writes a dataset."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers import ROOT, run_echolab, tiny_ef_config, write_config


@pytest.fixture()
def good_config(phantom_echonet, tmp_path):
    return tiny_ef_config(phantom_echonet, tmp_path / "run")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["model"]["init_args"].update(learning_rte=0.1), "learning_rte"),
        (lambda c: c["data"]["init_args"].update(batch_size="eight"), "batch_size"),
        (lambda c: c["model"].update(class_path="echo_modules.NoSuchModel"), "NoSuchModel"),
        (lambda c: c["data"]["init_args"].update(data_dir="/no/such/EchoNet"), "data_dir"),
    ],
    ids=["wrong-key", "wrong-type", "unknown-class", "missing-data-dir"],
)
def test_bad_config_fails_before_work_with_one_line(good_config, tmp_path, edit, expected):
    edit(good_config)
    config = write_config(tmp_path / "bad.yaml", good_config)
    result = run_echolab("fit", "--config", str(config), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("echolab: error:") and expected in lines[0]
    assert not (tmp_path / "run").exists()  # no run directory: nothing started


def test_phantom_command_writes_echonet_layout(tmp_path):
    result = run_echolab(
        "phantom", "--format", "echonet", "--out", str(tmp_path / "ph"), "--num-videos", "6", "--seed", "2"
    )
    assert result.returncode == 0, result.stderr
    files = pd.read_csv(tmp_path / "ph" / "FileList.csv")
    assert len(files) == 6 and len(list((tmp_path / "ph" / "Videos").glob("*.avi"))) == 6


def test_every_config_parses():
    """Each shipped config composes with the trainer and logger fragments (no instantiation, no data needed)."""
    from lightning.pytorch.cli import LightningCLI  # noqa: F401

    from cli import run_cli

    configs = [
        [str(c)]
        for c in sorted((ROOT / "configs").rglob("*.yaml"))
        if c.parent.name not in {"trainer", "logger"} and c.name != "quickstart_stage2.yaml"
    ]
    configs.append([str(ROOT / "configs" / "quickstart.yaml"), str(ROOT / "configs" / "quickstart_stage2.yaml")])
    for config in configs:
        for fragment in ("trainer/cpu.yaml", "logger/csv.yaml"):
            args = [
                "fit",
                *(f"--config={c}" for c in config),
                "--config",
                str(ROOT / "configs" / fragment),
                "--print_config",
            ]
            with pytest.raises(SystemExit) as exit_info:
                run_cli(args)
            assert exit_info.value.code in (0, None), config


@pytest.mark.slow
def test_shipped_config_refreshes_last_checkpoint_every_epoch(phantom_echonet, tmp_path):
    """The shipped configs keep best.ckpt (monitored) and a last.ckpt written after every validation, even when the
    monitored metric does not improve, so `--ckpt_path last` resumes the latest epoch, not the best one."""
    import torch

    run = tmp_path / "run"
    fit = run_echolab(
        "fit", "--config", str(ROOT / "configs" / "ef_regressor" / "phantom.yaml"),
        "--data.init_args.data_dir", str(phantom_echonet), "--data.init_args.num_workers", "0",
        "--data.init_args.frame_size", "32", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.logger", "false", "--trainer.default_root_dir", str(run),
        "--trainer.callbacks.init_args.monitor", "epoch", "--trainer.callbacks.init_args.mode", "min",  # never improves
        cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "ef_regressor_phantom" / "checkpoints"
    assert torch.load(checkpoints / "best.ckpt", weights_only=False)["epoch"] == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 1
