"""Rank-N-Contrast (Zha et al., NeurIPS 2023), the representation loss of CoReEcho, vectorised and DDP-aware.

For anchor ``i`` and positive ``j != i`` the loss term is

    -log( exp(s_ij) / sum_{k != i, |y_i - y_k| >= |y_i - y_j|} exp(s_ik) ),   s = -||z_i - z_k||_2 / temperature,

averaged over the ``N (N - 1)`` ordered pairs of the batch (``N`` = clips x views). The reference implementation builds
an ``(N, N - 1)`` mask per positive column in a Python loop (``O(N^3)`` work, and ``O(N^3)`` memory when vectorised
naively). Here each anchor's candidates are sorted by decreasing label distance once: the denominator for positive
``j`` is then a prefix of that order, so one cumulative log-sum-exp gives every denominator, and the prefix of ``j``
runs to the end of its group of tied label distances (ties included, as ``>=`` demands). Work is ``O(N^2 log N)``
and memory ``O(N^2)`` -- the size of the similarity matrix itself -- computed in chunks of anchors so that the
intermediate tensors of one chunk stay bounded (``anchor_chunk_size``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange

#: anchors x candidates per chunk when ``anchor_chunk_size`` is not given (about 4 MB per float32 tensor)
DEFAULT_CHUNK_ELEMENTS = 2**20
#: rows of logits spanning less than this are summed by the fast path of log_cumsum_exp (exp(-700) ~ 1e-304 is
#: still a normal float64)
_FAST_RANGE = 700.0


def _as_label_matrix(labels: torch.Tensor) -> torch.Tensor:
    """Labels as ``(N, L)`` floats: scalar labels (EF) become one column."""
    labels = labels if labels.is_floating_point() else labels.float()
    return rearrange(labels, "n -> n 1") if labels.ndim == 1 else labels


def pairwise_l2(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(A, N)`` via ``|a|^2 + |b|^2 - 2ab`` (no ``(A, N, D)`` difference tensor).

    The clamp before the square root makes the gradient 0 instead of NaN where two embeddings coincide.
    Callers centre the embeddings first: distances do not change, but the cancellation error of the formula does.
    """
    squared = (
        anchors.square().sum(-1, keepdim=True)
        + rearrange(candidates.square().sum(-1), "n -> 1 n")
        - 2.0 * anchors @ candidates.T
    )
    return squared.clamp_min(1e-12).sqrt()


def log_cumsum_exp(values: torch.Tensor) -> torch.Tensor:
    """``logcumsumexp`` along dim 1, exact, with a fast path.

    Rows whose values span less than ``_FAST_RANGE`` are summed as ``exp(x - max)`` in float64 (no underflow at that
    range, and the backward pass is a plain reversed cumsum); other rows use ``torch.logcumsumexp``, whose CPU
    backward is an order of magnitude slower.
    """
    shift = values.detach().amax(dim=1, keepdim=True)
    span = shift - values.detach().amin(dim=1, keepdim=True)
    exponents = (values - shift).clamp_min(-_FAST_RANGE).double()  # the clamp only bites in rows replaced below
    fast = (exponents.exp().cumsum(dim=1).log() + shift).to(values.dtype)
    wide = span.squeeze(1) >= _FAST_RANGE
    if bool(wide.any()):  # embeddings spread over > 700 temperatures: rare, exactness first
        fast = torch.where(wide.unsqueeze(1), torch.logcumsumexp(values, dim=1), fast)
    return fast


def _anchor_block_sum(
    anchor_embeddings: torch.Tensor,
    anchor_labels: torch.Tensor,
    anchor_positions: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Sum of the loss terms of a block of anchors (all their positives) against every candidate."""
    logits = -pairwise_l2(anchor_embeddings, embeddings) / temperature  # (A, N)
    label_gap = (rearrange(anchor_labels, "a l -> a 1 l") - rearrange(labels, "n l -> 1 n l")).abs().sum(-1)
    is_self = rearrange(anchor_positions, "a -> a 1") == rearrange(
        torch.arange(len(embeddings), device=embeddings.device), "n -> 1 n"
    )
    # the anchor itself gets a gap below every real one: sorted by decreasing gap it comes last, and is dropped
    label_gap = label_gap.masked_fill(is_self, -1.0)
    order = label_gap.argsort(dim=1, descending=True)[:, :-1]
    sorted_gaps = label_gap.gather(1, order)
    sorted_logits = logits.gather(1, order)
    log_prefix_sums = log_cumsum_exp(sorted_logits)
    # positive p's denominator is the prefix up to the last candidate tied with p (gap >= gap_p, ties included)
    count = sorted_gaps.shape[1]
    position = torch.arange(count, device=embeddings.device).expand_as(sorted_gaps)
    is_group_end = torch.ones_like(sorted_gaps, dtype=torch.bool)
    is_group_end[:, :-1] = sorted_gaps[:, 1:] != sorted_gaps[:, :-1]
    group_end = torch.where(is_group_end, position, count - 1).flip(1).cummin(dim=1).values.flip(1)
    return (log_prefix_sums.gather(1, group_end) - sorted_logits).sum()


def rank_n_contrast_sum(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    anchors: slice | None = None,
    anchor_chunk_size: int | None = None,
) -> torch.Tensor:
    """Sum (not mean) of the Rank-N-Contrast terms whose anchor lies in ``anchors`` (default: all).

    ``embeddings`` ``(N, D)``, ``labels`` ``(N,)`` or ``(N, L)`` (L1 distance over the label columns). Computed outside
    autocast, in float32 for half-precision inputs (float64 inputs stay float64).
    """
    device_type = embeddings.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        embeddings = embeddings - embeddings.mean(0, keepdim=True).detach()  # see pairwise_l2
        labels = _as_label_matrix(labels).to(embeddings.device, embeddings.dtype)
        start, stop, _ = (anchors or slice(None)).indices(len(embeddings))
        chunk = anchor_chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // max(len(embeddings), 1))
        total = embeddings.new_zeros(())
        for first in range(start, stop, chunk):  # a loop over chunks of anchors, not over samples
            last = min(first + chunk, stop)
            positions = torch.arange(first, last, device=embeddings.device)
            total = total + _anchor_block_sum(
                embeddings[first:last], labels[first:last], positions, embeddings, labels, temperature
            )
        return total


def rank_n_contrast_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    anchor_chunk_size: int | None = None,
) -> torch.Tensor:
    """Rank-N-Contrast loss of one batch: the mean over its ``N (N - 1)`` anchor-positive pairs.

    With two views per clip pass both views as separate rows (``(2B, D)``) with the clip's label repeated.
    """
    count = len(embeddings)
    if count < 2:
        raise ValueError(f"Rank-N-Contrast needs at least 2 embeddings, got {count}")
    return rank_n_contrast_sum(embeddings, labels, temperature, None, anchor_chunk_size) / (count * (count - 1))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows concatenated in rank order, and where this rank's rows start.

    Gradients flow back to every rank's local rows (``torch.distributed.nn.functional.all_gather`` sums the incoming
    gradients over ranks in its backward). Ranks may hold different numbers of rows: they are padded for the
    collective and the padding is dropped again.
    """
    world_size, rank = _world()
    if world_size == 1:
        return local, 0
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros((), dtype=torch.long, device=local.device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor(len(local), device=local.device))
    sizes = [int(size) for size in sizes]
    padding = local.new_zeros(max(sizes) - len(local), *local.shape[1:])
    padded = torch.cat([local, padding]) if len(padding) else local
    parts = all_gather(padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), sum(sizes[:rank])


def distributed_rank_n_contrast_loss(
    local_embeddings: torch.Tensor,
    local_labels: torch.Tensor,
    temperature: float = 2.0,
    anchor_chunk_size: int | None = None,
) -> torch.Tensor:
    """This rank's share of the Rank-N-Contrast loss of the *global* batch (all ranks' rows gathered).

    Each rank computes the terms of its own anchors against every row of the global batch, so the work is split
    across ranks. Convention: the returned share is ``world_size * (sum of this rank's terms) / (N (N - 1))`` with
    ``N`` the global row count, so that

    * the mean of the shares over ranks is the single-process loss on the concatenated batch (log it with
      ``sync_dist=True``), and
    * after DDP averages parameter gradients over ranks they equal the single-process gradient: the gather's backward
      sums every rank's contribution to a rank's rows, ``world_size`` times the global loss's gradient, and DDP's
      average divides that factor out.

    Without a process group this is :func:`rank_n_contrast_loss`.
    """
    world_size, _ = _world()
    if world_size == 1:
        return rank_n_contrast_loss(local_embeddings, local_labels, temperature, anchor_chunk_size)
    embeddings, offset = gather_with_grad(local_embeddings)
    labels, _ = gather_with_grad(_as_label_matrix(local_labels).detach())
    count = len(embeddings)
    if count < 2:
        raise ValueError(f"Rank-N-Contrast needs at least 2 embeddings in the global batch, got {count}")
    local_anchors = slice(offset, offset + len(local_embeddings))
    share = rank_n_contrast_sum(embeddings, labels, temperature, local_anchors, anchor_chunk_size)
    return share * world_size / (count * (count - 1))


def naive_rank_n_contrast_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """The loss written as its definition, with Python loops over anchor, positive and candidate (tests only)."""
    labels = _as_label_matrix(labels).to(embeddings.dtype)
    count = len(embeddings)
    total = embeddings.new_zeros(())
    for i in range(count):
        for j in range(count):
            if j == i:
                continue
            positive_gap = (labels[i] - labels[j]).abs().sum()
            similarity = -(embeddings[i] - embeddings[j]).norm() / temperature
            negatives = [
                -(embeddings[i] - embeddings[k]).norm() / temperature
                for k in range(count)
                if k != i and (labels[i] - labels[k]).abs().sum() >= positive_gap
            ]
            total = total - (similarity - torch.logsumexp(torch.stack(negatives), dim=0))
    return total / (count * (count - 1))
