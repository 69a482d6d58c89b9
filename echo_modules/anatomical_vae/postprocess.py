"""Post-processing in the AR-VAE latent space: nearest-valid correction (TMI 2020) and temporal smoothing (TMI 2022).

Correction (the TMI 2020 step that was never released): an invalid frame is encoded to z0; if its reconstruction is
already valid it is used; otherwise z0 moves to the nearest latent of the valid bank zb and then back along the
segment zb -> z0 to the point closest to z0 that still decodes valid (a grid over the segment, refined by bisection
between the last valid and the first invalid point). Valid frames are left untouched.

Temporal smoothing (castor's snake): each latent dim over time is a 1-D signal x; the snake moves x along
(x - x0) + w * (x - neighbour mean) until it stops. Its stationary point solves A x = x0 (:func:`snake_system`),
solved here directly instead of iterating momentum descent to it. castor's A = I + w (I - N), N the neighbour mean
with an edge frame averaged with itself and its one neighbour, is the minimiser of |x - x0|^2 + w/2 |D1 x|^2: it
penalises slope, so a trend between the first and the last frame shrinks toward its mean; a CAMUS half-sequence runs
ED -> ES, so the frames EF is measured on are exactly those it moves most. The default ``trend_cubic`` (trend +
residual, :func:`smoothing_operator`) keeps the least-squares cubic trend of the whole sequence exactly and runs
castor's free-ended snake on the residual only, so the shrinkage hits the jitter and not the ED -> ES trend and every
frame is smoothed, the end frames included (``trend_linear`` / ``trend_quadratic`` / ``trend_cosine`` keep other
trends); ``pinned`` holds the first and last frames (castor's rows on the inner frames only), so a linear trend
between them passes unchanged and ED/ES keep their values, jitter included; ``volume_trend`` is a boundary per dim
(:func:`dim_boundaries`): trend_cubic on the volume dims (lv_area, lv_base_width, lv_length) and the unnamed dims,
castor's free ends on the pose dims (lv_orientation, myo_area, epi_center_x, epi_center_y);
``second_difference`` (Whittaker, free ends) keeps linear trends but moves the ends; ``pinned_second_difference``
holds the ends with the second-difference rows on the inner frames.
For attribute dims w is the smallest value in [0, 128] (binary search, depth 5) for which every inner frame of the
min-max scaled result satisfies |x_t - (x_{t-1} + x_{t+1}) / 2| <= tau; the other dims use w = 50.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from scipy import ndimage

from echo_modules.anatomical_vae.attributes import ATTRIBUTES, compute_attributes

# castor's thresholds (vital/data/camus/statistics/attr_thresholds.yaml) on min-max scaled curves
ATTRIBUTE_THRESHOLDS = {
    "lv_area": 1.60e-2,
    "lv_base_width": 9.69e-2,
    "lv_length": 2.62e-2,
    "lv_orientation": 2.29e-2,
    "myo_area": 3.21e-2,
    "epi_center_x": 4.56e-3,
    "epi_center_y": 1.10e-2,
}


# ---------------------------------------------------------------------------------------------------- correction


@torch.no_grad()
def correct_latents(
    codes: torch.Tensor,
    bank: torch.Tensor,
    decode_valid: Callable[[torch.Tensor], torch.Tensor],
    grid_points: int = 9,
    bisection_steps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrected latents ``(B, D)`` for invalid codes ``(B, D)`` and the fraction ``t`` kept of each code
    (1 = its own reconstruction was valid, 0 = the bank latent itself)."""
    if len(bank) == 0:
        raise ValueError("the latent bank is empty: build it (AnatomicalVAE.build_latent_bank) before correcting")
    nearest = bank[torch.cdist(codes.float(), bank.float()).argmin(dim=1)].to(codes)
    steps = torch.linspace(0, 1, grid_points, device=codes.device, dtype=codes.dtype)  # 0: bank, 1: original
    points = nearest[:, None] + steps[None, :, None] * (codes - nearest)[:, None]  # (B, G, D)
    valid = decode_valid(points.reshape(-1, codes.shape[1])).reshape(len(codes), grid_points).to(codes.device)
    valid[:, 0] = True  # the bank latent decodes valid by construction
    # the last valid grid point before the first invalid one, walking from the bank toward the original
    first_invalid = torch.where(
        (~valid).any(dim=1), (~valid).float().argmax(dim=1), torch.full_like(valid[:, 0], grid_points, dtype=torch.long)
    )
    low = steps[first_invalid - 1]
    high = torch.where(first_invalid < grid_points, steps[first_invalid.clamp(max=grid_points - 1)], steps[-1])
    for _ in range(bisection_steps if grid_points > 1 else 0):
        open_interval = high > low
        middle = (low + high) / 2
        ok = decode_valid(nearest + middle[:, None] * (codes - nearest)).to(codes.device)
        low = torch.where(open_interval & ok, middle, low)
        high = torch.where(open_interval & ~ok, middle, high)
    return nearest + low[:, None] * (codes - nearest), low


def keep_input_where_valid(
    inputs: np.ndarray, corrected: np.ndarray, is_valid: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Corrected masks ``(N, H, W)`` with every region where they differ from their (invalid) ``inputs`` put back to
    the input's labels, as long as the frame stays valid: the decoding fixes the defect, the input keeps its detail
    (a VAE decoding is smoother than a segmenter's mask; beyond the papers, which keep the whole decoding).

    Regions are the 8-connected components of ``inputs != corrected``. Per frame: every region whose reversal alone
    keeps the frame valid is reverted together; if that joint frame is invalid, those regions are added one at a
    time, largest first, each kept only if the frame stays valid. ``is_valid`` maps ``(M, H, W)`` to ``(M,)`` bool.
    The result is valid wherever ``corrected`` was."""
    out = np.array(corrected, copy=True)
    for index, (source, target) in enumerate(zip(inputs, corrected, strict=True)):
        regions, count = ndimage.label(source != target, structure=np.ones((3, 3), bool))
        if count == 0:
            continue
        candidates = np.repeat(target[None], count, axis=0)
        for region in range(count):
            where = regions == region + 1
            candidates[region][where] = source[where]
        alone = np.flatnonzero(is_valid(candidates)) + 1
        if len(alone) == 0:
            continue
        joint = np.where(np.isin(regions, alone), source, target)
        if is_valid(joint[None])[0]:
            out[index] = joint
            continue
        sizes = ndimage.sum_labels(np.ones_like(regions), regions, alone)
        frame = target.copy()
        for region in alone[np.argsort(-sizes, kind="stable")]:
            trial = np.where(regions == region, source, frame)
            if is_valid(trial[None])[0]:
                frame = trial
        out[index] = frame
    return out


# ---------------------------------------------------------------------------------------------------- smoothing


SmoothingBoundary = Literal[
    "volume_trend",
    "pinned",
    "pinned_second_difference",
    "second_difference",
    "castor",
    "trend_linear",
    "trend_quadratic",
    "trend_cubic",
    "trend_cosine",
]
SMOOTHING_BOUNDARIES: tuple[str, ...] = get_args(SmoothingBoundary)
# the trend bases of the ``trend_*`` smoothers: Legendre polynomials up to this degree (``trend_cosine``: 1 and a
# half cosine)
TREND_DEGREES = {"trend_linear": 1, "trend_quadratic": 2, "trend_cubic": 3}
# ``volume_trend``: a boundary per latent dim. The volume dims (what EF is measured from) and the unnamed dims (the
# rest of the shape) keep their cubic trend and lose the residual jitter; the pose dims, which have no ED -> ES
# trend EF needs, get castor's free ends (the most smoothing at a weight, the end frames included)
VOLUME_ATTRIBUTES = ("lv_area", "lv_base_width", "lv_length")
PER_DIM_BOUNDARIES = {"volume_trend": {"volume": "trend_cubic", "pose": "castor", "other": "trend_cubic"}}


def dim_boundaries(boundary: str | tuple[str, ...], attributes: tuple[str, ...], latent_dim: int) -> tuple[str, ...]:
    """The boundary of each of ``latent_dim`` dims, the first ``len(attributes)`` regularised on ``attributes``: a
    per-dim boundary (:data:`PER_DIM_BOUNDARIES`) by each dim's kind, any other name for every dim, a tuple as is."""
    if not isinstance(boundary, str):
        if len(boundary) != latent_dim:
            raise ValueError(f"{len(boundary)} smoothing boundaries for {latent_dim} latent dims")
        return tuple(boundary)
    if boundary not in PER_DIM_BOUNDARIES:
        return (boundary,) * latent_dim
    kinds = PER_DIM_BOUNDARIES[boundary]
    named = tuple(kinds["volume" if name in VOLUME_ATTRIBUTES else "pose"] for name in attributes)
    return named + (kinds["other"],) * (latent_dim - len(attributes))


def _neighbour_operator(length: int) -> np.ndarray:
    """N: x -> mean of each frame's neighbours (an edge frame: itself and its one neighbour)."""
    operator = np.zeros((length, length))
    for t in range(length):
        if 0 < t < length - 1:
            operator[t, t - 1] = operator[t, t + 1] = 0.5
        elif length > 1:
            operator[t, t] = operator[t, t + 1 if t == 0 else t - 1] = 0.5
        else:
            operator[t, t] = 1.0
    return operator


def trend_basis(length: int, trend: str) -> np.ndarray:
    """``(T, K)`` columns spanning the trend a ``trend_*`` smoother keeps: Legendre polynomials up to the boundary's
    degree on [-1, 1] (``trend_linear`` / ``trend_quadratic`` / ``trend_cubic``), or ``trend_cosine``'s constant and
    half cosine cos(pi t / (T - 1)), the shape of a volume curve from ED (t = 0) to ES (t = T - 1). At most ``T``
    columns (a sequence no longer than the basis is all trend)."""
    time = np.linspace(-1.0, 1.0, length) if length > 1 else np.zeros(1)
    if trend == "trend_cosine":
        columns = np.stack([np.ones(length), np.cos(np.pi * (time + 1.0) / 2.0)], axis=1)
    elif trend in TREND_DEGREES:
        columns = np.polynomial.legendre.legvander(time, TREND_DEGREES[trend])
    else:
        raise ValueError(f"no trend basis for smoothing boundary {trend!r}")
    return columns[:, : max(length, 1)]


def snake_system(length: int, weight: float, boundary: str = "pinned") -> np.ndarray:
    """The ``(T, T)`` matrix A of the smoother's stationary point A x = x0 (see the module docstring).

    castor: I + w (I - N), castor's snake; I - N is half the first-difference Laplacian with free ends, so this is
    the minimiser of |x - x0|^2 + w/2 |D1 x|^2: it penalises slope, and a trend (ED -> ES) shrinks toward its mean.
    pinned: castor's rows on the inner frames, the first and last frames kept as they are (a linear trend between
    them passes unchanged). second_difference: I + w/8 D2^T D2 (Whittaker, free ends), the minimiser of
    |x - x0|^2 + w/8 |D2 x|^2: linear trends lie in its null space; w/8 gives it castor's gain at frame-to-frame
    alternation (1 / (1 + 2w)), so the same w removes the same jitter. pinned_second_difference: the
    second-difference rows on the inner frames, the first and last frames held (the inner frames follow the straight
    line between the held ends: no slope penalty and no seam at the ends). The ``trend_*`` smoothers are not of this
    form (:func:`smoothing_operator`)."""
    if boundary not in SMOOTHING_BOUNDARIES or boundary.startswith("trend") or boundary in PER_DIM_BOUNDARIES:
        operators = tuple(b for b in SMOOTHING_BOUNDARIES if not b.startswith("trend") and b not in PER_DIM_BOUNDARIES)
        raise ValueError(f"smoothing boundary must be one of {operators}, got {boundary!r}")
    identity = np.eye(length)
    if boundary in ("second_difference", "pinned_second_difference"):
        if length < 3:
            return identity
        second = np.diff(identity, n=2, axis=0)  # (T - 2, T) rows (1, -2, 1)
        system = identity + weight / 8.0 * second.T @ second
    else:
        system = identity + weight * (identity - _neighbour_operator(length))
    if boundary.startswith("pinned") and length >= 2:
        system[[0, -1]] = identity[[0, -1]]
    return system


def smoothing_operator(length: int, weight: float, boundary: str = "pinned") -> np.ndarray:
    """The ``(T, T)`` linear smoother S, smoothed = S x0, of every boundary.

    ``trend_*`` (trend + residual): the least-squares trend P x0 in :func:`trend_basis` (P the projection onto it)
    is kept exactly and castor's free-ended snake smooths only the residual, S = P + A_castor^-1 (I - P). The snake's
    shrinkage toward the mean then hits the jitter and not the ED -> ES trend, and, unlike the pinned smoothers,
    the end frames are smoothed too (their jitter is residual). As w grows S tends to P (the residual's mean is 0).
    The other boundaries: S = A^-1 (:func:`snake_system`)."""
    if boundary not in SMOOTHING_BOUNDARIES or boundary in PER_DIM_BOUNDARIES:
        operators = tuple(b for b in SMOOTHING_BOUNDARIES if b not in PER_DIM_BOUNDARIES)
        raise ValueError(f"smoothing boundary must be one of {operators}, got {boundary!r} (per dim: dim_boundaries)")
    if not boundary.startswith("trend"):
        return np.linalg.solve(snake_system(length, weight, boundary), np.eye(length))
    basis = trend_basis(length, boundary)
    projection = basis @ np.linalg.pinv(basis)
    residual = np.eye(length) - projection
    return projection + np.linalg.solve(snake_system(length, weight, "castor"), residual)


def snake(signal: np.ndarray, weight: float, boundary: str = "pinned") -> np.ndarray:
    """The smoother's result for a ``(T,)`` or ``(T, D)`` signal (:func:`smoothing_operator`)."""
    signal = np.asarray(signal, np.float64)
    if not boundary.startswith("trend"):
        return np.linalg.solve(snake_system(len(signal), weight, boundary), signal)
    return smoothing_operator(len(signal), weight, boundary) @ signal


def second_difference(signal: np.ndarray) -> np.ndarray:
    """|x_t - (x_{t-1} + x_{t+1}) / 2| of the inner frames, ``(T - 2, ...)``."""
    return np.abs(signal[1:-1] - 0.5 * (signal[:-2] + signal[2:]))


def _minmax(signal: np.ndarray, bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, float, float]:
    """``signal`` scaled to [0, 1] by ``bounds`` (a dataset's (low, high), as castor scales), else by its own range."""
    low, high = (float(signal.min()), float(signal.max())) if bounds is None else (float(bounds[0]), float(bounds[1]))
    return (signal - low) / max(high - low, 1e-12), low, high


def _violations(scaled: np.ndarray, threshold: float) -> int:
    """Inner frames over ``threshold`` (a NaN, an attribute of a missing structure, counts as one)."""
    return int((~(second_difference(scaled) <= threshold)).sum()) if len(scaled) >= 3 else 0


def smooth_attribute_dim(
    signal: np.ndarray,
    threshold: float,
    max_weight: float = 128.0,
    depth: int = 5,
    bounds: tuple[float, float] | None = None,
    measure: Callable[[np.ndarray], np.ndarray] | None = None,
    lowest: float = 0.0,
    boundary: str = "pinned",
) -> tuple[np.ndarray, float]:
    """Smallest snake weight (binary search in [lowest, max_weight], ``depth`` steps) whose result meets
    ``threshold`` on every inner frame; returns the smoothed signal and the weight.

    The check is on ``measure(smoothed)`` when given (a curve already scaled, e.g. the attribute of the decoded
    masks), else on the signal itself scaled by ``bounds`` (None: the input's min-max). When even ``max_weight`` fails,
    a ladder of ``depth`` weights between is tried too and the fewest violations win (the least smoothing on a tie). The snake is affine-equivariant, so
    it runs on the unscaled signal."""

    if bounds is None:  # the input's own range (the smoothed curve is checked on the same scale)
        bounds = (float(signal.min()), float(signal.max()))

    def check(weight: float) -> int:
        smoothed = snake(signal, weight, boundary) if weight > 0 else signal
        curve = measure(smoothed) if measure is not None else _minmax(smoothed, bounds)[0]
        return _violations(curve, threshold)

    tried = {lowest: check(lowest)} if len(signal) >= 3 else {lowest: 0}
    if tried[lowest] == 0:
        return (snake(signal, lowest, boundary) if lowest > 0 else signal.copy()), float(lowest)
    tried[max_weight] = check(max_weight)
    if tried[max_weight] == 0:
        low, high = lowest, max_weight
        for _ in range(depth):
            middle = (low + high) / 2
            tried[middle] = check(middle)
            low, high = (low, middle) if tried[middle] == 0 else (middle, high)
        weight = high
    else:  # a ladder of weights, the fewest violations (then the least smoothing) wins
        for step in range(1, depth + 1):
            weight = lowest + (max_weight - lowest) * step / (depth + 1)
            tried[weight] = check(weight)
        weight = min(tried, key=lambda w: (tried[w], w))
    return snake(signal, weight, boundary), float(weight)


def smooth_latent_sequence(
    codes: np.ndarray,
    attribute_thresholds: tuple[float, ...] = tuple(ATTRIBUTE_THRESHOLDS.values()),
    other_weight: float = 50.0,
    max_weight: float = 128.0,
    depth: int = 5,
    code_bounds: np.ndarray | None = None,
    measure: Callable[[np.ndarray], np.ndarray] | None = None,
    passes: int = 2,
    boundary: str | tuple[str, ...] = "pinned",
    cache_decodes: bool = True,
    attributes: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth a ``(T, D)`` latent trajectory: dims ``0..A-1`` under their thresholds, the rest with ``other_weight``.
    Returns the smoothed codes and the weight used per dim.

    code_bounds: ``(2, D)`` low/high of each dim over the training codes (castor's scaling; None: each curve's own
    range). measure: latents ``(T, D)`` -> ``(T, A)`` attribute curves of their decodings, scaled by the training
    attributes' bounds. With it, a second pass raises each attribute dim's weight (binary search between its
    latent-criterion weight and ``max_weight``) until the attribute measured on the decoded masks meets its threshold:
    the latent dim only approximates its attribute (the decoder and the other dims move it too), so a latent curve
    that passes can decode to one that does not. ``passes`` repeats that pass (a later dim's smoothing moves an
    earlier dim's attribute); weights only grow. cache_decodes: measure each trajectory once (a search's first
    check is the trajectory the previous one ended on; the same result, fewer decodes); False decodes every check
    (the search before the cache, kept for benchmarks/anatomical_vae.py). boundary: one for every dim, a per-dim
    name or a tuple (:func:`dim_boundaries`; ``attributes``: the names of the attribute dims, default the first
    of :data:`ATTRIBUTES`)."""
    codes = np.asarray(codes, np.float64)
    attributes = ATTRIBUTES[: len(attribute_thresholds)] if attributes is None else tuple(attributes)
    boundaries = dim_boundaries(boundary, attributes, codes.shape[1])
    out, weights = np.empty_like(codes), np.empty(codes.shape[1])
    for dim in range(codes.shape[1]):
        if dim < len(attribute_thresholds):
            bounds = None if code_bounds is None else (code_bounds[0, dim], code_bounds[1, dim])
            out[:, dim], weights[dim] = smooth_attribute_dim(
                codes[:, dim], attribute_thresholds[dim], max_weight, depth, bounds, boundary=boundaries[dim]
            )
        else:
            out[:, dim], weights[dim] = snake(codes[:, dim], other_weight, boundaries[dim]), other_weight
    if measure is None or len(codes) < 3:
        return out, weights
    cache: dict[bytes, np.ndarray] = {}  # decoded attribute curves by latent trajectory: a search's first check
    # (its dim at the weight it already has) is the trajectory the previous search ended on

    def measure_cached(trial: np.ndarray) -> np.ndarray:
        key = trial.tobytes()
        if key not in cache or not cache_decodes:
            cache[key] = measure(trial)
        return cache[key]

    for _, (dim, threshold) in itertools.product(range(passes), enumerate(attribute_thresholds)):

        def measured(signal: np.ndarray, dim: int = dim) -> np.ndarray:
            trial = out.copy()
            trial[:, dim] = signal
            return measure_cached(trial)[:, dim]

        out[:, dim], weights[dim] = smooth_attribute_dim(
            codes[:, dim], threshold, max_weight, depth, measure=measured, lowest=weights[dim], boundary=boundaries[dim]
        )
    return out, weights


# ---------------------------------------------------------------------------------------------------- metrics


def dice_per_class(prediction: np.ndarray, target: np.ndarray, classes: tuple[int, ...] = (1, 2, 3)) -> np.ndarray:
    """``(N, K)`` hard Dice of each frame for each class (1 when both are empty)."""
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.ndim == 2:
        prediction, target = prediction[None], target[None]
    out = np.empty((len(prediction), len(classes)))
    for k, label in enumerate(classes):
        p = (prediction == label).reshape(len(prediction), -1)
        t = (target == label).reshape(len(target), -1)
        total = p.sum(axis=1) + t.sum(axis=1)
        out[:, k] = np.where(total > 0, 2 * (p & t).sum(axis=1) / np.maximum(total, 1), 1.0)
    return out


def temporal_metrics(
    masks: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0), bounds: np.ndarray | None = None
) -> dict[str, float]:
    """Temporal consistency of a ``(T, H, W)`` sequence: the fraction of inner frames whose min-max scaled attribute
    curve breaks castor's second-difference threshold (per attribute and any), and the mean frame-to-frame Dice.

    bounds: ``(2, 7)`` low/high of each attribute over a training set, in the units ``spacing`` gives (castor's
    scaling, which the thresholds assume; :attr:`AnatomicalVAE.attribute_bounds`). None scales each curve by its own
    range, which turns a nearly constant attribute's pixel noise into full-range jumps: use it only without a model."""
    attributes = compute_attributes(masks, spacing)
    out: dict[str, float] = {}
    breaks = []
    for index, name in enumerate(ATTRIBUTES):
        curve = attributes[:, index]
        if len(curve) < 3 or np.isnan(curve).any():
            violation = np.ones(max(len(curve) - 2, 1), bool)
        else:
            limits = None if bounds is None else (bounds[0][index], bounds[1][index])
            violation = second_difference(_minmax(curve, limits)[0]) > ATTRIBUTE_THRESHOLDS[name]
        out[f"violations_{name}"] = float(violation.mean())
        breaks.append(violation)
    out["violations_any"] = float(np.stack(breaks).any(axis=0).mean())
    out["frame_to_frame_dice"] = float(dice_per_class(masks[1:], masks[:-1]).mean()) if len(masks) > 1 else 1.0
    return out
