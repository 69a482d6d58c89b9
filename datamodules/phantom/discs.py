"""Single-plane method of discs (Simpson's rule) on an LV cavity mask, in EchoNet's tracing format.

`disc_tracing` turns a mask into the (num_discs + 1, 4) rows of EchoNet's VolumeTracings.csv: row 0 the long axis from
the apex to the mitral-annulus midpoint, then one chord per disc, perpendicular to the axis at the disc's centre.
Volumes come from the tracing (`datamodules.tracings.volume_from_tracing`), so an EF computed here and the EF recomputed
from a written tracing agree exactly.

Masks are upright (apex at the top, as the data contract requires). The base is the mask's flat end: its two corners
are the mask points that reach farthest diagonally downward (along long axis +/- short axis), the base midpoint lies
between them, and the apex is the mask point farthest from that midpoint. Ends and chord endpoints are placed to
sub-pixel precision where the bilinearly interpolated mask crosses 0.5, i.e. on the mask's pixel edges.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from datamodules.tracings import volume_from_tracing

_STEP = 0.1  # sampling step (pixels) along the axis and the chords


def _sample(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear mask value at (..., 2) points (x, y); 0 outside the image."""
    flat = points.reshape(-1, 2)
    values = ndimage.map_coordinates(
        mask, [flat[:, 1], flat[:, 0]], order=1, mode="constant", cval=0.0, prefilter=False
    )
    return values.reshape(points.shape[:-1])


def _extreme_mean(points: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mean of the points that attain the maximum score (ties on a pixel staircase are common)."""
    return points[score >= score.max() - 1e-9].mean(axis=0)


def disc_tracing(lv_mask: np.ndarray, num_discs: int = 20) -> np.ndarray:
    """(num_discs + 1, 4) rows X1, Y1, X2, Y2: the long axis (apex, base midpoint), then the chords, apex to base."""
    mask = np.asarray(lv_mask) > 0
    if mask.ndim != 2:
        raise ValueError(f"lv_mask must be a 2D (H, W) mask, got shape {mask.shape}")
    if num_discs < 2:
        raise ValueError(f"num_discs must be >= 2, got {num_discs}")
    rows, cols = np.nonzero(mask)
    if rows.size < 8:
        raise ValueError(f"lv_mask has {rows.size} foreground pixels; the method of discs needs a traced LV cavity")
    points = np.stack([cols, rows], axis=1).astype(np.float64)
    field = mask.astype(np.float32)

    # principal direction, oriented toward the base (downward: apex at the top)
    centred = points - points.mean(axis=0)
    sxx, syy, sxy = (centred[:, 0] ** 2).sum(), (centred[:, 1] ** 2).sum(), (centred[:, 0] * centred[:, 1]).sum()
    _, vectors = np.linalg.eigh(np.array([[sxx, sxy], [sxy, syy]]))
    down = vectors[:, 1]
    if down[1] < 0 or (down[1] == 0 and down[0] < 0):
        down = -down
    side = np.array([down[1], -down[0]])
    corner_a = _extreme_mean(points, points @ (down + side))
    corner_b = _extreme_mean(points, points @ (down - side))
    base_mid = 0.5 * (corner_a + corner_b)
    distance = np.linalg.norm(points - base_mid, axis=1)
    apex_pixel = _extreme_mean(points, distance)
    axis = base_mid - apex_pixel
    length = np.linalg.norm(axis)
    if length < 1.0:
        raise ValueError("lv_mask is too small or too round to find a long axis")
    axis /= length  # unit vector apex -> base
    normal = np.array([axis[1], -axis[0]])

    # long-axis ends: where the mask along the apex-base line ends, on both sides
    s = np.arange(-(length + 3.0), 3.0 + _STEP, _STEP)
    line = _sample(field, base_mid + s[:, None] * axis)
    inside = np.flatnonzero(line >= 0.5)
    if inside.size == 0:
        raise ValueError("the long axis of lv_mask does not pass through the mask; is the mask upright and convex?")
    first, last = inside[0], inside[-1]
    s_apex, s_base = s[0], s[-1]
    if first > 0:
        s_apex = s[first] - _STEP * (line[first] - 0.5) / max(line[first] - line[first - 1], 1e-12)
    if last + 1 < s.size:
        s_base = s[last] + _STEP * (line[last] - 0.5) / max(line[last] - line[last + 1], 1e-12)
    apex = base_mid + s_apex * axis
    base = base_mid + s_base * axis

    # chords at the disc centres, perpendicular to the axis
    fractions = (np.arange(num_discs) + 0.5) / num_discs
    centres = apex[None, :] + fractions[:, None] * (base - apex)[None, :]
    reach = np.abs((points - base_mid) @ normal).max() + 3.0
    t = np.arange(0.0, reach + _STEP, _STEP)
    ends = []
    for direction in (normal, -normal):
        samples = _sample(field, centres[:, None, :] + t[None, :, None] * direction[None, None, :])
        outside = samples < 0.5
        first_out = np.where(outside.any(axis=1), outside.argmax(axis=1), t.size - 1)
        rows_idx = np.arange(num_discs)
        before = np.maximum(first_out - 1, 0)
        f_in, f_out = samples[rows_idx, before], samples[rows_idx, first_out]
        crossing = t[before] + _STEP * (f_in - 0.5) / np.maximum(f_in - f_out, 1e-12)
        crossing = np.where(first_out == 0, 0.0, crossing)  # the centre itself is outside: a zero-length chord
        ends.append(centres + crossing[:, None] * direction[None, :])
    tracing = np.empty((num_discs + 1, 4), dtype=np.float64)
    tracing[0] = [apex[0], apex[1], base[0], base[1]]
    tracing[1:, 0:2] = ends[0]
    tracing[1:, 2:4] = ends[1]
    return tracing


def lv_volume(lv_mask: np.ndarray, num_discs: int = 20) -> float:
    """Method-of-discs LV volume of a mask, in pixel^3."""
    return volume_from_tracing(disc_tracing(lv_mask, num_discs))


def ef_from_tracings(ed_tracing: np.ndarray, es_tracing: np.ndarray) -> float:
    """EF (%) = 100 * (EDV - ESV) / EDV from two tracings' method-of-discs volumes."""
    edv, esv = volume_from_tracing(ed_tracing), volume_from_tracing(es_tracing)
    if edv <= 0:
        raise ValueError("the end-diastolic tracing has zero volume")
    return 100.0 * (edv - esv) / edv


def ef_from_masks(ed_lv_mask: np.ndarray, es_lv_mask: np.ndarray, num_discs: int = 20) -> float:
    """EF (%) from end-diastolic and end-systolic LV cavity masks by the method of discs."""
    return ef_from_tracings(disc_tracing(ed_lv_mask, num_discs), disc_tracing(es_lv_mask, num_discs))
