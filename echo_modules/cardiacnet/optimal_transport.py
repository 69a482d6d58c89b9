"""Optimal-transport costs between two sets of feature vectors, differentiable with respect to both (Eq. 5).

CardiacNet's Eq. 5 sums, over feature dimensions ``i``, the cost of the best one-to-one matching ``pi^i`` between the
``i``-th coordinates of two memory banks: one 1-D optimal-transport problem per dimension. In 1-D the optimal matching
pairs order statistics, so sorting both sets per dimension solves all ``d`` problems exactly in ``O(n log n)``
(:func:`sorted_ot_cost`, the default). POT with its torch backend gives the alternatives, gradients included:
``emd`` (exact OT of the whole vectors, one matching shared by all dimensions), ``sinkhorn`` (entropic OT of the
whole vectors, regularised value) and ``sliced`` (random 1-D projections instead of the coordinate axes).

Every method uses uniform weights (``1/n`` per sample, POT's convention) and squared Euclidean ground cost divided by
the number of dimensions, so all four report a mean squared distance per dimension and a bank of any size or width
gives costs on the same scale. For the same sets, ``sorted`` <= ``emd`` (per-dimension matchings relax the shared one).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

OTMethod = Literal["sorted", "emd", "sinkhorn", "sliced"]
OT_METHODS: tuple[str, ...] = ("sorted", "emd", "sinkhorn", "sliced")
EMD_MAX_ITERATIONS = 100_000_000


@lru_cache(maxsize=64)
def _quantile_matching(n: int, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which order statistics meet, and with what mass, when ``n`` and ``m`` uniform atoms are matched in 1-D.

    The optimal plan between two uniform empirical measures on a line couples their quantile functions; both are
    step functions with steps at multiples of ``1/n`` and ``1/m``. Between consecutive steps of the merged grid the
    plan moves mass ``w_r`` from the ``i_r``-th smallest source atom to the ``j_r``-th smallest target atom. Integer
    arithmetic on a grid of ``lcm(n, m)`` makes the indices exact.
    """
    grid = n * m // math.gcd(n, m)
    levels = torch.unique(torch.cat([torch.arange(0, grid + 1, grid // n), torch.arange(0, grid + 1, grid // m)]))
    low, high = levels[:-1], levels[1:]
    source_index = ((low + high) * n) // (2 * grid)  # the atom whose quantile step holds the interval's midpoint
    target_index = ((low + high) * m) // (2 * grid)
    mass = (high - low).double() / grid
    return source_index, target_index, mass


def _at_least_float32(values: Tensor) -> Tensor:
    return values if values.dtype == torch.float64 else values.float()


def sorted_ot_cost(source: Tensor, target: Tensor) -> Tensor:
    """Exact Eq. 5: the 1-D optimal-transport cost of every dimension, averaged over dimensions.

    ``source`` ``(n, d)`` and ``target`` ``(m, d)`` (``n`` and ``m`` may differ). Each dimension's cost is the squared
    2-Wasserstein distance between the uniform empirical measures of its coordinates, found by matching order
    statistics; gradients flow to both inputs through the sort.
    """
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"need (n, d) and (m, d) feature sets, got {tuple(source.shape)} and {tuple(target.shape)}")
    source_sorted = torch.sort(_at_least_float32(source), dim=0).values
    target_sorted = torch.sort(_at_least_float32(target), dim=0).values
    n, m = len(source), len(target)
    if n == m:
        return (source_sorted - target_sorted).square().mean()
    source_index, target_index, mass = _quantile_matching(n, m)
    device = source.device
    gap = source_sorted[source_index.to(device)] - target_sorted[target_index.to(device)]  # (intervals, d)
    per_dimension = (gap.square() * mass.to(device=device, dtype=gap.dtype)[:, None]).sum(0)
    return per_dimension.mean()


def pot_ot_cost(
    source: Tensor,
    target: Tensor,
    method: Literal["emd", "sinkhorn", "sliced"] = "emd",
    reg: float = 0.05,
    num_projections: int = 128,
    seed: int | None = None,
) -> Tensor:
    """OT cost of whole feature vectors with POT's torch backend (differentiable), per dimension like
    :func:`sorted_ot_cost`.

    emd: exact (network simplex, ``ot.emd2``; its iteration cap is raised from POT's 1e5, which a few thousand samples
    already reach, stopping before optimality). sinkhorn: KL-regularised entropic OT, ``reg`` relative to the mean
    ground cost, through ``ot.solve(..., grad="envelope")``: the gradient comes from the converged plan, so memory does
    not grow with the iterations (autodiff through ``ot.sinkhorn2`` keeps every iteration: ~11 GB for 1024 x 1024
    samples); the value includes the regulariser. sliced: ``ot.sliced_wasserstein_distance`` squared, with
    ``num_projections`` random unit directions (a random direction sees the per-dimension mean on average).
    """
    import ot

    source, target = _at_least_float32(source), _at_least_float32(target)
    n, m, dims = len(source), len(target), source.shape[1]
    if method == "sliced":
        distance = ot.sliced_wasserstein_distance(source, target, n_projections=num_projections, p=2, seed=seed)
        return distance.square()
    weights_source = torch.full((n,), 1.0 / n, device=source.device, dtype=source.dtype)
    weights_target = torch.full((m,), 1.0 / m, device=source.device, dtype=source.dtype)
    cost = ot.dist(source, target, metric="sqeuclidean") / dims
    if method == "emd":
        return ot.emd2(weights_source, weights_target, cost, numItermax=EMD_MAX_ITERATIONS)
    if method == "sinkhorn":
        scale = float(cost.detach().mean().clamp_min(1e-12))
        solution = ot.solve(cost, weights_source, weights_target, reg=reg * scale, tol=1e-6, grad="envelope")
        return solution.value
    raise ValueError(f"unknown POT method {method!r}; choose one of {OT_METHODS}")


def ot_cost(
    source: Tensor,
    target: Tensor,
    method: OTMethod = "sorted",
    reg: float = 0.05,
    num_projections: int = 128,
) -> Tensor:
    """The OT cost between two feature sets by ``method`` (see the module docstring), computed in float32."""
    with torch.autocast(device_type=source.device.type, enabled=False):
        if method == "sorted":
            return sorted_ot_cost(source, target)
        if method in ("emd", "sinkhorn", "sliced"):
            return pot_ot_cost(source, target, method, reg=reg, num_projections=num_projections)
    raise ValueError(f"unknown OT method {method!r}; choose one of {OT_METHODS}")
