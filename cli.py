"""The ``echolab`` command: LightningCLI (fit/validate/test/predict) for every method and dataset, plus ``phantom``
and ``configs`` (and every command registered in :data:`COMMANDS`).

    echolab fit --config configs/coreecho/phantom.yaml [--config configs/trainer/ddp.yaml] [--key value ...]
    echolab fit --config coreecho/phantom.yaml          (a shipped config by name, from any folder or install)
    echolab phantom --format echonet --out data/phantom --num-videos 100 --seed 0

(The command is ``echolab``, not ``echo``: ``echo`` is a shell builtin that would only print its arguments.)
A config error (unknown key, wrong type, unknown class, missing data_dir, a non-positive batch size, a missing or
unreadable ``--ckpt_path``) stops before any work with one line on stderr and exit code 2.

One checkpoint setup for every config: unless a config lists its own ``ModelCheckpoint``, ``fit`` keeps
``<run>/checkpoints/best.ckpt`` (the model's monitored metric, ``--checkpoint.monitor/mode`` to change it) and
``<run>/checkpoints/last.ckpt`` (after every validation), where ``<run>`` is ``trainer.default_root_dir``; the
logger writes under the same folder unless it names its own ``save_dir``. A config gives the run folder once.
"""

from __future__ import annotations

import argparse
import logging
import netrc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from datamodules.errors import ConfigError, DataError

#: the shipped configs: next to this file in a checkout and in an installed wheel (package data of ``configs``)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LIGHTNING_COMMANDS = {
    "fit": "train a model (then validation every epoch; best.ckpt and last.ckpt in <run>/checkpoints)",
    "validate": "run the validation split once",
    "test": "evaluate on the test split, write test_summary.json and figures",
    "predict": "write per-video predictions (predictions.csv)",
}
#: data-module init args that must be positive integers (or null where the DataModule allows it)
POSITIVE_DATA_ARGS = ("batch_size", "eval_batch_size", "clip_length", "period", "frame_size", "num_eval_clips")
CHECKPOINT_SHORTHANDS = ("last", "best", "hpc")


def _wandb_offline_without_credentials() -> None:
    """Run W&B offline (sync later with ``wandb sync``) unless the user has credentials or chose a mode."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    try:
        has_login = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_login = False
    if not has_login:
        os.environ["WANDB_MODE"] = "offline"


class EchoLabCLI(LightningCLI):
    """LightningCLI in subclass mode: a config picks the method and the dataset by ``class_path``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--checkpoint.monitor",
            type=str | None,
            default=None,
            help="metric that best.ckpt follows (default: the model's, e.g. val/mae; ignored when the config lists "
            "its own ModelCheckpoint)",
        )
        parser.add_argument(
            "--checkpoint.mode", type=Literal["min", "max"] | None, default=None, help="min or max for the monitor"
        )

    def before_instantiate_classes(self) -> None:
        """Check values and paths before anything is built (a pretrained backbone would otherwise download first),
        and point the logger at the run folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        data = config.get("data")
        init_args = getattr(data, "init_args", None)
        data_dir = getattr(init_args, "data_dir", None) if init_args is not None else None
        if data_dir is not None and not Path(str(data_dir)).expanduser().exists():
            name = str(getattr(data, "class_path", "data")).rsplit(".", 1)[-1]
            raise ConfigError(
                f"data.data_dir '{data_dir}' does not exist: set --data.data_dir for {name} "
                "(or write a phantom dataset with `echolab phantom`)"
            )
        for key in POSITIVE_DATA_ARGS:
            value = getattr(init_args, key, None) if init_args is not None else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"data.init_args.{key} must be a positive integer, got {value!r}")
        workers = getattr(init_args, "num_workers", None) if init_args is not None else None
        if isinstance(workers, int) and workers < 0:
            raise ConfigError(f"data.init_args.num_workers must be 0 or more, got {workers}")
        _logger_in_run_folder(config.get("trainer"))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with the one default checkpoint setup when the config brings no ModelCheckpoint."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer", {})
        listed = trainer.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        if trainer.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in listed):
            kwargs.setdefault("callbacks", [*listed, *self._default_checkpoints(config)])
        return super().instantiate_trainer(**kwargs)

    def _default_checkpoints(self, config: Any) -> list[ModelCheckpoint]:
        """``best.ckpt`` by the monitored metric and ``last.ckpt`` after every validation, in ``<run>/checkpoints``.

        Two callbacks: one ModelCheckpoint's ``save_last`` refreshes last.ckpt only when it saves a top-k checkpoint
        too, so a run whose metric stopped improving would resume from an old epoch. ``best`` comes first: it is
        ``trainer.checkpoint_callback`` (``--ckpt_path best``)."""
        root = Path(str(config["trainer"].get("default_root_dir") or os.getcwd())) / "checkpoints"
        settings = config.get("checkpoint") or {}
        monitor, mode = settings.get("monitor"), settings.get("mode")
        model_default = getattr(self.model, "checkpoint_monitor", None)
        if monitor is None and model_default is not None:
            monitor, mode = model_default[0], mode or model_default[1]
        last = ModelCheckpoint(dirpath=root, filename="last", enable_version_counter=False)
        if monitor is None:
            return [last]
        best = ModelCheckpoint(
            dirpath=root,
            filename="best",
            monitor=monitor,
            mode=mode or "min",
            enable_version_counter=False,
            auto_insert_metric_name=False,
        )
        return [best, last]

    def _parse_ckpt_path(self) -> None:
        """Take the model's hyperparameters from ``--ckpt_path`` only when the config names no model.

        LightningCLI merges a checkpoint's hyperparameters over the parsed config, which silently discards what the
        user typed (``--model.init_args.predictions_csv out.csv`` would be ignored). Here the config wins; a bare
        ``echolab test --ckpt_path x.ckpt --data ...`` still rebuilds the model from the checkpoint.
        """
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint_path(self.config[subcommand].get("ckpt_path"))
        model = self.config[subcommand].get("model") if subcommand else None
        if model is not None and getattr(model, "class_path", None):
            return
        super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        """Seed as LightningCLI does, without its log line (the seed is in the saved config), so that a config
        error that follows is the only line on stderr."""
        seed_logger = logging.getLogger("lightning.fabric.utilities.seed")
        level = seed_logger.level
        seed_logger.setLevel(logging.WARNING)
        try:
            super()._set_seed()
        finally:
            seed_logger.setLevel(level)


def _logger_in_run_folder(trainer: Any) -> None:
    """No logger configured (``true``/null): a CSVLogger in ``<run>/logs``; a logger whose ``save_dir`` is its default
    ``.`` (W&B) or empty: the run folder. The run folder is ``trainer.default_root_dir``, given once per config."""
    if trainer is None:
        return
    root = trainer.get("default_root_dir") or os.getcwd()
    logger = trainer.get("logger")
    if logger is None or logger is True:
        trainer["logger"] = Namespace(
            class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=str(root), name="logs")
        )
        return
    for one in logger if isinstance(logger, list) else [logger]:
        init_args = getattr(one, "init_args", None)
        if isinstance(one, Namespace) and init_args is not None and init_args.get("save_dir") in (None, "", "."):
            init_args["save_dir"] = str(root)


def check_checkpoint_path(ckpt_path: Any) -> None:
    """A ``--ckpt_path`` that is neither a shorthand (last, best, hpc, registry) nor a readable checkpoint file is
    a one-line config error, before any work (Lightning would otherwise fail with a traceback after setup)."""
    if not ckpt_path or str(ckpt_path) in CHECKPOINT_SHORTHANDS or str(ckpt_path).startswith("registry"):
        return
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--ckpt_path '{ckpt_path}' does not exist (give a checkpoint file, or 'last' to resume a fit's last.ckpt)"
        )
    import torch

    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except RuntimeError as error:  # a legacy (non-zip) file cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(
            f"--ckpt_path '{path}' is not a readable checkpoint ({type(error).__name__}: {reason})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"--ckpt_path '{path}' is not a Lightning checkpoint (no state_dict in it)")


def _one_line(error: BaseException) -> str:
    """The useful sentence of an error: our own ConfigError if one is in the chain, else jsonargparse's reason."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (ConfigError, DataError)):
            return " ".join(str(cause).split())
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(error).split())
    if "Errors: - " in text:  # subclass-mode union errors: keep the reason, drop the NoneType alternative
        key = text.split(":", 1)[0] + ": " if text.startswith("Parser key") else ""
        reason = text.split("Errors: - ", 1)[1].split(" - Expected a <class 'NoneType'>", 1)[0]
        if "data_dir" in reason and "does not exist" in reason:
            return reason
        text = key + reason
    return text if len(text) < 400 else text[:400] + " ..."


def run_cli(args: list[str] | None = None, run: bool = True) -> EchoLabCLI:
    """Build (and by default run) the CLI; raises on config errors instead of printing usage."""
    _wandb_offline_without_credentials()
    return EchoLabCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=42,
        parser_kwargs={"exit_on_error": False},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def phantom_main(args: list[str]) -> None:
    """``echolab phantom``: write a phantom dataset in a real dataset's on-disk layout."""
    parser = argparse.ArgumentParser(prog="echolab phantom", description=phantom_main.__doc__)
    parser.add_argument(
        "--format",
        choices=["echonet", "camus", "cardiacnet", "hmcqu"],
        default="echonet",
        help="on-disk layout to write",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-videos", type=int, default=100, help="videos (CAMUS: patients, two views each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", choices=["PAH", "ASD"], default="PAH", help="CardiacNet subset (disease)")
    parser.add_argument("--camus-layout", choices=["nifti", "mhd"], default="nifti", help="CAMUS 2023 or 2019 release")
    parser.add_argument(
        "--ef-distribution",
        choices=["echonet", "uniform", "camus"],
        default=None,
        help="EF distribution (default: echonet for EchoNet, camus for CAMUS)",
    )
    parser.add_argument("--max-frames", type=int, default=None, help="EchoNet: cap on the video lengths (frames)")
    parser.add_argument(
        "--pose-variation",
        type=float,
        default=1.0,
        help="EchoNet, CAMUS: probe-pose spread (1 = realistic, < 1 gentler)",
    )
    options = parser.parse_args(args)
    if options.num_videos < 3:
        parser.error("--num-videos must be at least 3 (one per split)")
    if options.format == "echonet":
        from datamodules.phantom.echonet_writer import write_echonet_dataset

        out = write_echonet_dataset(
            options.out,
            num_videos=options.num_videos,
            seed=options.seed,
            ef_distribution=options.ef_distribution or "echonet",
            max_frames=options.max_frames,
            pose_variation=options.pose_variation,
        )
    elif options.format == "camus":
        from datamodules.phantom.camus_writer import write_camus_dataset

        out = write_camus_dataset(
            options.out,
            options.num_videos,
            seed=options.seed,
            layout=options.camus_layout,
            ef_distribution=options.ef_distribution or "camus",
            pose_variation=options.pose_variation,
        )
    elif options.format == "cardiacnet":
        from datamodules.phantom.cardiacnet_writer import write_cardiacnet_dataset

        out = write_cardiacnet_dataset(options.out, options.num_videos, seed=options.seed, subset=options.subset)
    else:
        from datamodules.phantom.hmcqu_writer import write_hmcqu_dataset

        out = write_hmcqu_dataset(options.out, options.num_videos, seed=options.seed)
    print(f"wrote a {options.num_videos}-item phantom dataset in the {options.format} layout to {out}")


def configs_main(args: list[str]) -> None:
    """``echolab configs``: list the shipped configs (usable as ``--config <name>`` from any folder)."""
    parser = argparse.ArgumentParser(prog="echolab configs", description=configs_main.__doc__)
    parser.parse_args(args)
    print(f"shipped configs in {CONFIG_DIR} (pass e.g. --config coreecho/phantom.yaml):")
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        print(f"  {path.relative_to(CONFIG_DIR).as_posix()}")


#: subcommands beside LightningCLI's: name -> (one-line help, function taking the remaining argv). Register a new
#: command here with one line (e.g. ``"anatomy": (..., lambda argv: anatomy_main(argv))``).
COMMANDS: dict[str, tuple[str, Callable[[list[str]], None]]] = {
    "phantom": ("write a phantom dataset in a real dataset's on-disk layout", lambda argv: phantom_main(argv)),
    "configs": ("list the shipped configs", lambda argv: configs_main(argv)),
    "anatomy": ("anatomical validity of a folder of segmentations (no model)", lambda argv: anatomy_main(argv)),
}


def anatomy_main(args: list[str]) -> None:
    """``echolab anatomy MASKS_DIR --csv out.csv``: see :mod:`echo_modules.anatomical_vae.commands`."""
    from echo_modules.anatomical_vae.commands import anatomy_main as run

    run(args)


def version() -> str:
    from echo_modules import __version__

    return __version__


def print_help() -> None:
    """The top-level help: every subcommand, LightningCLI's and ours."""
    lines = [
        "usage: echolab <command> [options]   (echolab <command> --help for a command's options)",
        "",
        "EchoLab: echocardiography deep learning on PyTorch Lightning.",
        "",
        "commands:",
        *(f"  {name:<9} {text}" for name, text in LIGHTNING_COMMANDS.items()),
        *(f"  {name:<9} {text}" for name, (text, _) in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help     show this message and exit",
        "  --version      print the version and exit",
        "",
        "e.g. echolab fit --config coreecho/phantom.yaml --data.init_args.data_dir data/phantom_echonet",
    ]
    print("\n".join(lines))


def resolve_config_names(argv: list[str]) -> list[str]:
    """``--config NAME``: a file when it exists, else a shipped config (``coreecho/phantom.yaml`` or
    ``configs/coreecho/phantom.yaml`` from any folder, also in a non-editable install)."""
    resolved, take_next = [], False
    for arg in argv:
        if take_next or arg.startswith("--config="):
            prefix = "" if take_next else "--config="
            value = arg[len(prefix) :]
            if not Path(value).expanduser().exists():
                name = value.removeprefix("configs/")
                for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
                    if candidate.is_file():
                        value = str(candidate)
                        break
            arg = prefix + value
        take_next = arg == "--config"
        resolved.append(arg)
    return resolved


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print_help()
        return
    if argv[0] in ("--version", "-V"):
        print(f"echolab {version()}")
        return
    if argv[0] in COMMANDS:
        try:
            COMMANDS[argv[0]][1](argv[1:])
        except (ConfigError, DataError) as error:
            print(f"echolab: error: {_one_line(error)}", file=sys.stderr)
            sys.exit(2)
        return
    resolved = resolve_config_names(argv)
    if args is None:  # LightningCLI reads sys.argv itself (and warns when it is given both)
        sys.argv[1:] = resolved
    try:
        run_cli(None if args is None else resolved)
    except (ConfigError, DataError) as error:
        print(f"echolab: error: {_one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if _is_argument_error(error):
            print(f"echolab: error: {_one_line(error)}", file=sys.stderr)
            sys.exit(2)
        raise
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Destroy the DDP process group before the interpreter exits: Lightning leaves it open, and a gloo group torn
    down by interpreter shutdown can abort the process ("terminate called without an active exception") after the
    run's work is done, turning a finished test or predict into a non-zero exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _is_argument_error(error: BaseException) -> bool:
    """jsonargparse parse errors (unknown key, wrong type, unknown class) and instantiation config errors."""
    import jsonargparse

    kinds = tuple(k for k in (getattr(jsonargparse, "ArgumentError", None), argparse.ArgumentError) if k)
    while error is not None:
        if isinstance(error, kinds) or isinstance(error, ConfigError):
            return True
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    main()
