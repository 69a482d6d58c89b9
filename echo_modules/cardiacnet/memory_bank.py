"""Per-class memory banks: FIFO queues of (detached) quantised feature descriptors, identical on every DDP rank.

A bank approximates the distribution of one class's features over many past batches (CardiacNet, Eqs. 4-5): its
centroid is the target of ``L_dis`` and its samples the target of ``L_OT``. The queues are registered buffers, so they
are saved in checkpoints and a resumed run continues with the banks it had. Under DDP every enqueue first gathers the
descriptors of all ranks (in rank order), so all ranks write the same rows and hold identical banks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def gather_from_all_ranks(values: Tensor) -> Tensor:
    """Concatenate ``values`` ``(n_rank, ...)`` of every rank in rank order (``n_rank`` may differ per rank);
    identity when not distributed. No gradient: banks hold detached features."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    world = dist.get_world_size()
    size = torch.tensor([len(values)], device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = values.new_zeros((longest, *values.shape[1:]))
    padded[: len(values)] = values
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part[: int(s.item())] for part, s in zip(gathered, sizes)])


class MemoryBank(nn.Module):
    """A FIFO queue of ``size`` feature vectors of dimension ``dim``; the oldest rows are overwritten first."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 1 and dim >= 1, got {size} and {dim}")
        self.size = size
        self.dim = dim
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # the next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # rows written so far, at most size

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def push(self, features: Tensor) -> None:
        """Write ``features`` ``(n, dim)`` (already gathered from all ranks) at the queue's head."""
        features = features.detach().to(self.features.dtype)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"bank of dim {self.dim} cannot take features of shape {tuple(features.shape)}")
        features = features[-self.size :]  # more rows than the bank holds: only the newest survive anyway
        rows = (int(self.pointer) + torch.arange(len(features), device=self.features.device)) % self.size
        self.features[rows] = features
        self.pointer.fill_((int(self.pointer) + len(features)) % self.size)
        self.count.fill_(min(self.size, int(self.count) + len(features)))

    def enqueue(self, features: Tensor) -> None:
        """Gather ``features`` ``(n, dim)`` from every rank and push them (collective under DDP: call on all ranks)."""
        self.push(gather_from_all_ranks(features.detach()))

    @property
    def filled(self) -> Tensor:
        """The rows written so far ``(len, dim)``."""
        return self.features[: len(self)]

    def centroid(self) -> Tensor:
        """Mean of the stored rows (the M-bar of Eq. 4)."""
        return self.filled.mean(0)


class ClassMemoryBanks(nn.Module):
    """One :class:`MemoryBank` per class, filled from labelled batches."""

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        self.banks = nn.ModuleList(MemoryBank(size, dim) for _ in range(num_classes))

    def __getitem__(self, label: int) -> MemoryBank:
        return self.banks[label]

    def __len__(self) -> int:
        return len(self.banks)

    @torch.no_grad()
    def enqueue(self, features: Tensor, labels: Tensor) -> None:
        """Gather ``features`` ``(n, dim)`` and ``labels`` ``(n,)`` from every rank, then push each class's rows into
        its bank (collective under DDP: call on all ranks, with any number of rows)."""
        gathered = gather_from_all_ranks(torch.cat([features.detach().float(), labels[:, None].float()], 1))
        features, labels = gathered[:, :-1], gathered[:, -1].long()
        for label, bank in enumerate(self.banks):
            chosen = features[labels == label]
            if len(chosen):
                bank.push(chosen)

    def ready(self, minimum: int) -> bool:
        """Whether every bank holds at least ``minimum`` rows."""
        return all(len(bank) >= minimum for bank in self.banks)
