"""The base LightningModule of EchoLab methods and helpers for multi-clip evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states


def average_clip_predictions(clip_values: torch.Tensor, clip_owner: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Average per-clip values ``(N, ...)`` into per-video values ``(num_videos, ...)`` using ``clip_owner`` (N,)."""
    flat = clip_values.reshape(len(clip_values), -1).float()
    sums = torch.zeros(num_videos, flat.shape[1], device=flat.device).index_add_(0, clip_owner, flat)
    counts = torch.bincount(clip_owner, minlength=num_videos).clamp(min=1).unsqueeze(1)
    return (sums / counts).reshape(num_videos, *clip_values.shape[1:])


class EchoModule(L.LightningModule):
    """LightningModule base that makes a resumed fit continue exactly where the interrupted one stopped.

    Lightning restores weights, optimisers, loops and (with our stateful loaders) the data position, but not the
    random number generators that dropout draws from. They are saved with each checkpoint and put back just before
    the first training batch after a resume (not at load time: creating the data iterator consumes random numbers).
    """

    def __init__(self) -> None:
        super().__init__()
        self._rng_states_to_restore: dict[str, Any] | None = None
        self._run_dir: Path | None = None
        self._checkpoint_normalisation: dict[str, float] | None = None

    @property
    def run_dir(self) -> Path:
        """The run's output folder (figures, ``test_summary.json``, predictions).

        ``trainer.log_dir`` is a collective under DDP (rank 0 broadcasts it), so it is resolved on every rank when
        testing or predicting starts and cached; code that runs on rank 0 only reads this cached value.
        """
        if self._run_dir is None:
            self._run_dir = run_directory(self.trainer)
        return self._run_dir

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


def run_directory(trainer) -> Path:
    """Where a run writes its files: the logger's folder, else the trainer's ``default_root_dir``. Call it on every
    rank (``trainer.log_dir`` broadcasts from rank 0); rank-0-only code uses :attr:`EchoModule.run_dir`."""
    return Path(trainer.log_dir or trainer.default_root_dir)


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
