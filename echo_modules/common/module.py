"""The base LightningModule of EchoLab methods: resumable fits, chunked multi-clip evaluation, optimiser construction,
a non-finite-loss stop, run-directory resolution, test summaries and predictions written through one
``BasePredictionWriter``. A method subclasses :class:`EchoModule` (or :class:`echo_modules.common.ef.EFModule` for EF
regression) and keeps only its networks, losses and step; ARCHITECTURE.md lists what each hook gives."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from datamodules.errors import ConfigError, DataError


def average_clip_predictions(clip_values: torch.Tensor, clip_owner: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Average per-clip values ``(N, ...)`` into per-video values ``(num_videos, ...)`` using ``clip_owner`` (N,)."""
    flat = clip_values.reshape(len(clip_values), -1).float()
    sums = torch.zeros(num_videos, flat.shape[1], device=flat.device).index_add_(0, clip_owner, flat)
    counts = torch.bincount(clip_owner, minlength=num_videos).clamp(min=1).unsqueeze(1)
    return (sums / counts).reshape(num_videos, *clip_values.shape[1:])


def run_in_chunks(function: Callable[[torch.Tensor], Any], clips: torch.Tensor, chunk_size: int | None) -> Any:
    """``function(clips)`` computed on at most ``chunk_size`` clips at a time and concatenated along the first axis.

    ``function`` returns a tensor, a tuple/list/dict/dataclass of tensors (one row per clip; None fields stay None),
    nested as deep as it likes. Without gradient
    (evaluation) only one chunk's activations are alive at a time, so memory no longer grows with the number of clips
    of a batch (a 1000-frame video evaluated on every clip). ``None``: one call.
    """
    if chunk_size is None or len(clips) <= chunk_size:
        return function(clips)
    return _concatenate([function(chunk) for chunk in clips.split(chunk_size)])


def _concatenate(parts: list[Any]) -> Any:
    first = parts[0]
    if first is None:
        return None
    if torch.is_tensor(first):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _concatenate([part[key] for part in parts]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concatenate(list(items)) for items in zip(*parts))
    if dataclasses.is_dataclass(first):
        names = [field.name for field in dataclasses.fields(first)]
        return type(first)(**{name: _concatenate([getattr(part, name) for part in parts]) for name in names})
    raise TypeError(f"run_in_chunks: cannot concatenate outputs of type {type(first).__name__}")


class PredictionRecord:
    """A row of ``predictions.csv``: a dataclass with a ``filename`` field and :meth:`row` (column -> text), and
    optionally the files of one prediction (masks, map videos) that :meth:`write_files` saves."""

    filename: str

    def row(self) -> dict[str, Any]:
        raise NotImplementedError

    def write_files(self, module: L.LightningModule) -> None:
        """Save the files this prediction carries, then drop their arrays (the record is gathered over ranks for the
        CSV and kept in ``trainer.predict``'s outputs). :class:`PredictionWriter` calls it at batch end on the rank
        that made the prediction, so files are written once under DDP. Default: no files."""


def number_text(value: float | None, digits: int = 3) -> str:
    """A CSV cell: the number with ``digits`` decimals, empty when unknown (None or NaN)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class PredictionWriter(BasePredictionWriter):
    """Writes the :class:`PredictionRecord` lists that ``predict_step`` returns: each record's files at batch end
    (:meth:`PredictionRecord.write_files`), then one CSV of their rows, sorted by file name.

    Rows are kept per batch on every rank and gathered at epoch end (every video once under DDP: the evaluation
    loaders never repeat one), so rank 0 writes one file whatever the number of processes. The path is the
    module's ``predictions_csv`` attribute, else ``<run dir>/predictions.csv``. Attached by
    :meth:`EchoModule.configure_callbacks`; a ``predict_step`` that returns anything else writes nothing here.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self._records: list[PredictionRecord] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if isinstance(prediction, (list, tuple)):
            for record in prediction:
                if isinstance(record, PredictionRecord):
                    record.write_files(pl_module)
                    self._records.append(record)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        records = gather_lists(self._records)  # a collective: every rank calls it
        self._records = []
        if not records or not trainer.is_global_zero:
            return
        rows = [record.row() for record in sorted(records, key=lambda record: record.filename)]
        path = getattr(pl_module, "predictions_csv", None) or Path(pl_module.run_dir) / "predictions.csv"
        path = write_csv(path, list(rows[0]), [list(row.values()) for row in rows])
        rank_zero_info(f"Wrote {len(rows)} predictions to {path}")


class EchoModule(L.LightningModule):
    """LightningModule base of every EchoLab method.

    - Resume: a resumed fit continues exactly where the interrupted one stopped. Lightning restores weights,
      optimisers, loops and (with our stateful loaders) the data position, but not the random number generators
      that dropout draws from; they are saved with each checkpoint and put back before the first training batch
      after a resume (not at load time: creating the data iterator consumes random numbers).
    - Evaluation: :meth:`run_in_chunks` pushes a batch's clips through a network ``eval_chunk_size`` at a time.
    - Optimisation: :meth:`configure_optimizers` builds ``optimizer(parameter_groups())`` and the ``scheduler``.
    - Training: a non-finite loss stops the fit with one line naming the step (:meth:`on_before_backward`).
    - Outputs: :attr:`run_dir`; :meth:`test_summary` -> ``test_summary.json``; ``predict_step`` returning
      :class:`PredictionRecord` lists -> ``predictions.csv`` through :class:`PredictionWriter`.
    - ``checkpoint_monitor``: the metric and mode the CLI's default ``best.ckpt`` follows (None: the config's).
    """

    checkpoint_monitor: tuple[str, str] | None = None

    def __init__(
        self,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        eval_chunk_size: int | None = 32,
    ) -> None:
        super().__init__()
        if eval_chunk_size is not None and eval_chunk_size < 1:
            raise ConfigError(
                f"model eval_chunk_size must be a positive number of clips or null, got {eval_chunk_size}"
            )
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.eval_chunk_size = eval_chunk_size
        self._rng_states_to_restore: dict[str, Any] | None = None
        self._run_dir: Path | None = None
        self._checkpoint_normalisation: dict[str, float] | None = None
        self._train_batch_idx = 0

    # ------------------------------------------------------------------ evaluation and optimisation

    def run_in_chunks(self, function: Callable[[torch.Tensor], Any], clips: torch.Tensor) -> Any:
        """:func:`run_in_chunks` with this module's ``eval_chunk_size`` (results equal one call on all clips)."""
        return run_in_chunks(function, clips, self.eval_chunk_size)

    def parameter_groups(self) -> Sequence[Any]:
        """What the optimizer steps: every trainable parameter (override for parameter groups)."""
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def configure_optimizers(self) -> Any:
        if self.optimizer is None:
            raise ConfigError(f"{type(self).__name__}: no optimizer configured (set model.init_args.optimizer)")
        optimizer = self.optimizer(self.parameter_groups())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    def configure_callbacks(self) -> list[Callback]:
        return [PredictionWriter()]

    def on_before_backward(self, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            raise DataError(
                f"non-finite training loss ({loss.detach().float().mean().item()}) at global step "
                f"{self.trainer.global_step} (epoch {self.trainer.current_epoch}, batch {self._train_batch_idx}): check "
                "that batch's labels and videos for NaN/inf or out-of-range values, then the learning rate and the "
                "precision (32-true instead of 16-mixed); resume from the last checkpoint with --ckpt_path last"
            )

    # ------------------------------------------------------------------ run folder, summaries

    @property
    def run_dir(self) -> Path:
        """The run's output folder (figures, ``test_summary.json``, predictions).

        ``trainer.log_dir`` is a collective under DDP (rank 0 broadcasts it), so it is resolved on every rank when
        testing or predicting starts and cached; code that runs on rank 0 only reads this cached value.
        """
        if self._run_dir is None:
            self._run_dir = run_directory(self.trainer)
        return self._run_dir

    def test_summary(self) -> dict[str, Any] | None:
        """The numbers ``test`` writes to ``test_summary.json``; called on every rank at test end (metrics' compute
        is a collective), written by rank 0. None: no summary."""
        return None

    def summary_line(self, summary: dict[str, Any]) -> str:
        """The line logged with the summary."""
        return "Test: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())

    def on_test_epoch_end(self) -> None:
        summary = self.test_summary()
        if summary and self.trainer.is_global_zero:
            rank_zero_info(self.summary_line(summary))
            save_test_summary(self.run_dir, summary)

    # ------------------------------------------------------------------ checkpoints and resume

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        name, keys, position, has_gauss, cached = states["numpy"]
        # tensors and plain numbers only, so the checkpoint loads with torch.load(weights_only=True)
        states["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(position), int(has_gauss), float(cached))
        checkpoint["rng_states"] = states
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(datamodule, "norm_mean", None) is not None:  # the intensities this model was trained on
            checkpoint["normalisation"] = {"mean": float(datamodule.norm_mean), "std": float(datamodule.norm_std)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is not None:
            name, keys, position, has_gauss, cached = states["numpy"]
            states = {**states, "numpy": (name, keys.numpy().astype("uint32"), position, has_gauss, cached)}
        self._rng_states_to_restore = states
        self._checkpoint_normalisation = checkpoint.get("normalisation")

    def _apply_checkpoint_normalisation(self) -> None:
        """Before test/predict from a checkpoint: let the DataModule normalise as the training run did."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self._checkpoint_normalisation is not None and hasattr(datamodule, "use_model_normalisation"):
            stats = self._checkpoint_normalisation
            datamodule.use_model_normalisation(stats["mean"], stats["std"])

    def _broadcast_buffers(self) -> None:
        """Give every rank rank 0's buffers (e.g. BatchNorm running statistics) before evaluating.

        DDP broadcasts buffers at the start of each training forward, so after the last step rank 0's statistics
        are one update ahead of the other ranks'; evaluating with them everywhere makes a DDP validation equal to a
        single-process validation of the saved checkpoint.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in self.buffers():
                dist.broadcast(buffer.data, src=0)

    def on_validation_start(self) -> None:
        self._broadcast_buffers()

    def on_test_start(self) -> None:
        self._run_dir = run_directory(self.trainer)  # on every rank: a collective under DDP
        self._apply_checkpoint_normalisation()
        self._broadcast_buffers()

    def on_predict_start(self) -> None:
        self._run_dir = run_directory(self.trainer)  # on every rank: a collective under DDP
        self._apply_checkpoint_normalisation()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._train_batch_idx = batch_idx
        if self._rng_states_to_restore is not None:
            states = self._rng_states_to_restore
            if not torch.cuda.is_available():
                states = {k: v for k, v in states.items() if k != "torch.cuda"}
            _set_rng_states(states)
            self._rng_states_to_restore = None


def gather_lists(values: list) -> list:
    """Concatenate a per-rank Python list over all DDP ranks (identity when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    gathered: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, list(values))
    return [item for part in gathered for item in part]


def updated_on_any_rank(module: L.LightningModule, *metrics: Any) -> bool:
    """Whether every torchmetrics metric saw an update on some rank: the same answer on all ranks (a rank may hold
    no abnormal video), so that all of them, or none, enter the metrics' synchronising ``compute``."""
    counts = torch.tensor([metric.update_count for metric in metrics], device=module.device)
    if module.trainer.world_size > 1:
        counts = module.all_gather(counts).sum(0)
    return bool((counts > 0).all())


def run_directory(trainer) -> Path:
    """Where a run writes its files: the logger's folder, else the trainer's ``default_root_dir``. Call it on every
    rank (``trainer.log_dir`` broadcasts from rank 0); rank-0-only code uses :attr:`EchoModule.run_dir`."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def metric_values(metrics: Any, prefix: str = "") -> dict[str, float]:
    """``compute()`` of a torchmetrics Metric/MetricCollection as plain floats, keys without the ``test/``-style
    folder and with ``prefix``. A collective under DDP: call it on every rank."""
    values = metrics.compute()
    if not isinstance(values, dict):
        values = {"value": values}
    return {prefix + key.rsplit("/", 1)[-1]: float(value) for key, value in values.items()}


def save_test_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``test_summary.json`` (the numbers a user reads after ``echolab test``) into ``run_dir``."""
    path = Path(run_dir) / "test_summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return path


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> Path:
    """Write a CSV table (predictions), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
