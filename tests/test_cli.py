"""The echolab command: bad configs fail before any work with one line and exit code 2; phantom writes a dataset."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

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
    result = run_echolab("fit", "--config", str(config))
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


#: overlay configs and the base each one is written on top of
OVERLAYS = {
    "quickstart.yaml": "coreecho/phantom.yaml",
    "quickstart_stage2.yaml": "coreecho/phantom.yaml",
    "coreecho/phantom_stage2.yaml": "coreecho/phantom.yaml",
    "coreecho/echonet_stage2.yaml": "coreecho/echonet.yaml",
}


def test_every_config_parses():
    """Each shipped config (an overlay on top of its base) composes with the trainer and logger fragments."""
    from cli import run_cli

    configs = [
        [str(ROOT / "configs" / OVERLAYS[name]), str(c)] if name in OVERLAYS else [str(c)]
        for c in sorted((ROOT / "configs").rglob("*.yaml"))
        if c.parent.name not in {"trainer", "logger"}
        for name in [c.relative_to(ROOT / "configs").as_posix()]
    ]
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


def test_configs_hold_no_checkpoint_callbacks_or_run_paths_twice():
    """One checkpoint setup (the CLI's): no config lists a ModelCheckpoint or repeats its run folder."""
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        text = path.read_text()
        assert "ModelCheckpoint" not in text, path
        config = yaml.safe_load(text) or {}
        root = (config.get("trainer") or {}).get("default_root_dir")
        if root:
            body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
            assert body.count(root) == 1, path


@pytest.mark.slow
def test_default_checkpoints_keep_best_and_refresh_last_every_epoch(phantom_echonet, tmp_path):
    """The CLI's one checkpoint setup: best.ckpt (monitored) and a last.ckpt written after every validation, even when
    the monitored metric does not improve, so `--ckpt_path last` resumes the latest epoch, not the best one; both in
    <run>/checkpoints for the run folder given once, the logs next to them."""
    import torch

    run = tmp_path / "run"
    fit = run_echolab(
        "fit", "--config", "ef_regressor/phantom.yaml",  # a shipped config by name, from another folder
        "--data.init_args.data_dir", str(phantom_echonet), "--data.init_args.num_workers", "0",
        "--data.init_args.frame_size", "32", "--data.init_args.clip_length", "8", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(run), "--model.init_args.encoder.init_args.width", "4",
        "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min",  # never improves
        cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["epoch"] == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert (run / "logs" / "version_0" / "metrics.csv").is_file()
    assert not (tmp_path / "runs").exists()  # nothing went to the config's own run folder


def _main(args: list[str], capfd) -> tuple[int, str, str]:
    """``cli.main(args)`` in this process (no interpreter start-up): exit code, stdout, stderr (file descriptors, so
    log handlers' output counts too)."""
    from cli import main

    capfd.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code or 0
    out, err = capfd.readouterr()
    return code, out, err


def test_help_lists_every_command_and_version_prints(capfd, monkeypatch):
    from cli import COMMANDS
    from echo_modules import __version__

    monkeypatch.setattr("sys.argv", ["echolab"])
    code, out, _ = _main(["--help"], capfd)
    assert code == 0
    for command in ("fit", "validate", "test", "predict", "phantom", "configs", *COMMANDS):
        assert f"  {command} " in out, command
    assert _main(["--version"], capfd)[:2] == (0, f"echolab {__version__}\n")


def test_shipped_configs_resolve_by_name_from_any_folder(tmp_path, monkeypatch, capfd):
    from cli import CONFIG_DIR, resolve_config_names

    monkeypatch.chdir(tmp_path)  # not the checkout: relative names are not files here
    assert resolve_config_names(["fit", "--config", "coreecho/phantom.yaml"])[2] == str(
        CONFIG_DIR / "coreecho" / "phantom.yaml"
    )
    assert resolve_config_names(["--config=configs/trainer/cpu.yaml"]) == [
        f"--config={CONFIG_DIR / 'trainer/cpu.yaml'}"
    ]
    (tmp_path / "mine.yaml").write_text("seed_everything: 1\n")
    assert resolve_config_names(["--config", str(tmp_path / "mine.yaml")])[1] == str(tmp_path / "mine.yaml")
    code, out, _ = _main(["configs"], capfd)
    assert code == 0 and "  coreecho/phantom.yaml" in out and "  quickstart.yaml" in out


def _corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(b"PK\x03\x04 not really a checkpoint" * 10)
    return path


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--data.init_args.batch_size", "-3"], "batch_size must be a positive integer, got -3"),
        (["--data.init_args.eval_batch_size", "0"], "eval_batch_size must be a positive integer, got 0"),
        (["--ckpt_path", "/no/such/best.ckpt"], "--ckpt_path '/no/such/best.ckpt' does not exist"),
        (["--ckpt_path", "CORRUPT"], "is not a readable checkpoint"),
    ],
    ids=["negative-batch-size", "zero-eval-batch-size", "missing-ckpt-path", "corrupt-checkpoint"],
)
def test_bad_values_and_checkpoints_fail_before_work_with_one_line(
    good_config, tmp_path, arguments, expected, capfd, monkeypatch
):
    """In this process (the subprocess test above shows the whole command's stderr is that one line)."""
    monkeypatch.setattr("sys.argv", ["echolab"])
    config = write_config(tmp_path / "good.yaml", good_config)
    arguments = [str(_corrupt_checkpoint(tmp_path)) if a == "CORRUPT" else a for a in arguments]
    command = "test" if "--ckpt_path" in arguments else "fit"
    code, _, err = _main([command, "--config", str(config), *arguments], capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("echolab: error:") and expected in lines[0], err[-2000:]
    assert not (tmp_path / "run").exists()  # no run directory: nothing started


def test_private_lightning_apis_we_rely_on_still_exist():
    """lightning is pinned to a tested minor range (pyproject); these are the private names EchoLab overrides or
    calls, so a Lightning upgrade that renames one fails here, by name, instead of deep inside a run."""
    import inspect

    from lightning.fabric.utilities import seed
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.strategies import DDPStrategy

    from cli import EchoLabCLI

    states = seed._collect_rng_states(include_cuda=False)  # EchoModule.on_save_checkpoint
    assert {"torch", "numpy", "python"} <= set(states) and len(states["numpy"]) == 5
    seed._set_rng_states(states)
    for name in ("_parse_ckpt_path", "_set_seed"):  # EchoLabCLI overrides
        assert list(inspect.signature(getattr(LightningCLI, name)).parameters) == ["self"], name
        assert getattr(EchoLabCLI, name) is not getattr(LightningCLI, name), name
    assert isinstance(DDPStrategy()._ddp_kwargs, dict)  # CardiacNet sets find_unused_parameters there


def test_checkpoint_random_state_round_trip_restores_dropout_draws():
    """The override that makes resume exact: RNG states saved in a checkpoint come back before the next batch."""
    import torch

    from echo_modules import EFRegressor
    from echo_modules.common import TinyVideoEncoder

    model = EFRegressor(encoder=TinyVideoEncoder(1, 4, 2))
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    expected = torch.rand(3)
    torch.rand(5)  # the generator moves on
    model.on_load_checkpoint(torch.load(_save(checkpoint), weights_only=True))  # plain tensors: weights_only loads
    model.on_train_batch_start({}, 0)
    torch.testing.assert_close(torch.rand(3), expected)


def _save(checkpoint: dict):
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.slow
def test_wheel_ships_the_configs_and_resolves_them_by_name(tmp_path):
    """A non-editable install has the configs (package data next to cli.py): built into a wheel from a copy of the
    checkout, unpacked, `echolab configs` lists them and a `--config coreecho/phantom.yaml` name resolves there."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md", "LICENSE", "cli.py", "configs", "echo_modules", "datamodules"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=skip)
        else:
            shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source, capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("echolab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cli.py", "configs/coreecho/phantom.yaml", "configs/trainer/ddp.yaml", "configs/slurm/train.sbatch"} <= set(
        names
    )
    assert any(n.endswith("licenses/LICENSE") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import cli; print(cli.CONFIG_DIR); print(cli.resolve_config_names(['--config', 'coreecho/phantom.yaml'])[1])"
    )
    env = dict(os.environ, PYTHONPATH=str(site))  # the unpacked wheel only, not the checkout
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    config_dir, resolved = result.stdout.split()
    assert config_dir == str(site / "configs") and resolved == str(site / "configs" / "coreecho" / "phantom.yaml")
