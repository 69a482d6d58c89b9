"""Test-only pieces used by the CLI subprocesses (importable as ``tests.helpers``)."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from functools import partial
from pathlib import Path

import lightning as L
import yaml

ROOT = Path(__file__).resolve().parents[1]


class KillAtStep(L.Callback):
    """SIGKILL the process when training reaches ``step``: a crash that leaves no chance to save anything."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_echolab(*args: str, cwd: Path | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the ``echolab`` command in its own process, as a user's would, and return its exit code and output.

    The process is forked from :mod:`tests.cli_server` (the CLI's imports done once, ~8 s saved per command); with
    ``ECHOLAB_TEST_FORK_SERVER=0``, or a ``timeout``, it is a fresh interpreter (``python cli.py ...``). No per-process
    timeout by default: on a loaded machine a real fit may take many times its idle duration (pytest-timeout still
    bounds a test that hangs)."""
    env = _child_env()
    if timeout is None and os.environ.get("ECHOLAB_TEST_FORK_SERVER", "1") != "0":
        return _CliServer.get(env).run(list(args), cwd or ROOT, env)
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _child_env() -> dict[str, str]:
    # a W&B run made earlier in this (pytest) process leaves its service address in os.environ; a child that inherits
    # it logs through the parent's service, which flushes the child's run file only later
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WANDB_SERVICE", "_WANDB"))}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", WANDB_MODE="offline")
    return env


class _CliServer:
    """The test process's handle on one :mod:`tests.cli_server` (started on first use, stopped at exit)."""

    _instance: _CliServer | None = None

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "cli_server.py")],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"tests/cli_server.py did not start (exit code {self.process.wait()})")
        self.lock = threading.Lock()
        atexit.register(self.close)

    @classmethod
    def get(cls, env: dict[str, str]) -> _CliServer:
        if cls._instance is None or cls._instance.process.poll() is not None:
            cls._instance = cls(env)
        return cls._instance

    def run(self, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory(prefix="echolab_cli_") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = json.loads(self.process.stdout.readline() or '{"error": "tests/cli_server.py exited"}')
            if "error" in reply:
                raise RuntimeError(f"tests/cli_server.py: {reply['error']}")
            read = partial(Path.read_text, errors="replace")
            return subprocess.CompletedProcess(
                [sys.executable, str(ROOT / "cli.py"), *args], reply["returncode"], read(out), read(err)
            )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def tiny_data_options(cache_dir: Path, **overrides) -> dict:
    """Keyword arguments for a video DataModule small enough for CPU tests (grey 8 x 32 x 32 clips, no workers)."""
    options = dict(frame_size=32, channels=1, batch_size=4, num_workers=0, clip_length=8, num_eval_clips=2,
                   cache_dir=str(cache_dir))  # fmt: skip
    return options | overrides


def tiny_ef_config(data_dir: Path, run_dir: Path, **overrides) -> dict:
    """A small EFRegressor config on the phantom that trains in seconds on a CPU."""
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "default_root_dir": str(run_dir),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "logs", "version": 0},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run_dir / "checkpoints"),
                        "save_last": True,
                        "every_n_train_steps": 3,
                        "save_top_k": -1,
                    },
                }
            ],
        },
        "model": {
            "class_path": "echo_modules.EFRegressor",
            "init_args": {
                "encoder": {
                    "class_path": "echo_modules.common.TinyVideoEncoder",
                    "init_args": {"in_channels": 1, "width": 8, "depth": 3},
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3.0e-3}},
            },
        },
        "data": {
            "class_path": "datamodules.echonet_dynamic.EchoNetDynamicDataModule",
            "init_args": {
                "data_dir": str(data_dir),
                "clip_length": 8,
                "period": 4,
                "frame_size": 32,
                "channels": 1,
                "batch_size": 4,
                "num_workers": 0,
                "num_eval_clips": 2,
                "cache_dir": str(run_dir.parent / "cache"),
            },
        },
    }
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


class RecordBatches(L.Callback):
    """Append ``global_step filename...`` of every training batch to ``path`` (to compare data order across runs)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{trainer.global_step} {' '.join(batch['filename'])} {batch['video'].sum().item():.4f}\n")


def check_ddp_test_and_predict(config_path: Path, checkpoint: Path, run_dir: Path, data_dir: Path) -> None:
    """``echolab test`` and ``predict`` with a 2-process DDP config finish (rank-0-only code must not enter a
    collective such as ``trainer.log_dir``) and report every TEST video exactly once."""
    import pandas as pd

    files = pd.read_csv(data_dir / "FileList.csv")
    test_names = sorted(Path(str(name)).stem for name in files.loc[files["Split"].str.upper() == "TEST", "FileName"])
    for command in ("test", "predict"):
        result = run_echolab(command, "--config", str(config_path), "--ckpt_path", str(checkpoint))
        assert result.returncode == 0, f"DDP {command}: " + result.stderr[-3000:]
    logs = sorted((run_dir / "logs").glob("version_*"))
    summaries = [json.loads(p.read_text()) for p in (run_dir / "logs").glob("version_*/test_summary.json")]
    assert len(summaries) == 1 and summaries[0]["videos"] == len(test_names), (logs, summaries)
    assert list((run_dir / "logs").glob("version_*/figures/test_ef_agreement.png"))
    predictions = [pd.read_csv(p) for p in (run_dir / "logs").glob("version_*/predictions.csv")]
    assert len(predictions) == 1
    assert sorted(Path(str(name)).stem for name in predictions[0]["FileName"]) == test_names
