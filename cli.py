"""The ``echolab`` command: LightningCLI (fit/validate/test/predict) for every method and dataset, plus ``phantom``.

    echolab fit --config configs/coreecho/phantom.yaml [--config configs/trainer/ddp.yaml] [--key value ...]
    echolab phantom --format echonet --out data/phantom --num-videos 100 --seed 0

(The command is ``echolab``, not ``echo``: ``echo`` is a shell builtin that would only print its arguments.)
A config error (unknown key, wrong type, unknown class, missing data_dir) stops before any work with one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import netrc
import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from datamodules.errors import ConfigError, DataError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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

    def before_instantiate_classes(self) -> None:
        """Check the data folder before anything is built (a pretrained backbone would otherwise download first)."""
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

    def _parse_ckpt_path(self) -> None:
        """Take the model's hyperparameters from ``--ckpt_path`` only when the config names no model.

        LightningCLI merges a checkpoint's hyperparameters over the parsed config, which silently discards what the
        user typed (``--model.init_args.predictions_csv out.csv`` would be ignored). Here the config wins; a bare
        ``echolab test --ckpt_path x.ckpt --data ...`` still rebuilds the model from the checkpoint.
        """
        subcommand = self.config.get("subcommand")
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
    options = parser.parse_args(args)
    if options.num_videos < 3:
        parser.error("--num-videos must be at least 3 (one per split)")
    if options.format == "echonet":
        from datamodules.phantom.echonet_writer import write_echonet_dataset

        out = write_echonet_dataset(options.out, num_videos=options.num_videos, seed=options.seed)
    elif options.format == "camus":
        from datamodules.phantom.camus_writer import write_camus_dataset

        out = write_camus_dataset(options.out, options.num_videos, seed=options.seed, layout=options.camus_layout)
    elif options.format == "cardiacnet":
        from datamodules.phantom.cardiacnet_writer import write_cardiacnet_dataset

        out = write_cardiacnet_dataset(options.out, options.num_videos, seed=options.seed, subset=options.subset)
    else:
        from datamodules.phantom.hmcqu_writer import write_hmcqu_dataset

        out = write_hmcqu_dataset(options.out, options.num_videos, seed=options.seed)
    print(f"wrote a {options.num_videos}-item phantom dataset in the {options.format} layout to {out}")


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "phantom":
        phantom_main(argv[1:])
        return
    if argv and argv[0] == "anatomy":  # anatomical validity of a folder of segmentations (no model)
        from echo_modules.anatomical_vae.commands import anatomy_main

        try:
            anatomy_main(argv[1:])
        except (ConfigError, DataError) as error:
            print(f"echolab: error: {_one_line(error)}", file=sys.stderr)
            sys.exit(2)
        return
    try:
        run_cli(args)
    except (ConfigError, DataError) as error:
        print(f"echolab: error: {_one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if _is_argument_error(error):
            print(f"echolab: error: {_one_line(error)}", file=sys.stderr)
            sys.exit(2)
        raise


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
