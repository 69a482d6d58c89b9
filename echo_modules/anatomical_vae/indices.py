"""Clinical indices from LV masks: EDV, ESV and EF by Simpson's method of discs, biplane (2CH + 4CH) or single-plane.

Discs come from the phantom's tracer (:func:`datamodules.phantom.discs.disc_tracing`: long axis apex -> base
midpoint, ``num_discs`` chords perpendicular to it), measured in mm with the pixel spacing (row, col). Biplane:
V = pi/4 * sum_i a_i * b_i * L / N, with a_i, b_i the two views' disc diameters and L the longer long axis;
single-plane: V = pi/4 * sum_i d_i^2 * L / N. Volumes in mL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from datamodules.phantom.discs import disc_tracing

LV = 1


def disc_geometry(
    lv_mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0), num_discs: int = 20
) -> tuple[np.ndarray, float]:
    """Disc diameters ``(num_discs,)`` and long-axis length, in mm, of one LV mask (labels or binary)."""
    tracing = disc_tracing(np.asarray(lv_mask) == LV, num_discs)
    scaled = tracing * np.array([spacing[1], spacing[0], spacing[1], spacing[0]])
    length = math.hypot(scaled[0, 2] - scaled[0, 0], scaled[0, 3] - scaled[0, 1])
    diameters = np.hypot(scaled[1:, 2] - scaled[1:, 0], scaled[1:, 3] - scaled[1:, 1])
    return diameters, length


def simpson_volume(geometries: Sequence[tuple[np.ndarray, float]]) -> float:
    """mL from one view's (single-plane) or two views' (biplane) disc geometry."""
    if len(geometries) == 1:
        diameters, length = geometries[0]
        product = diameters**2
    elif len(geometries) == 2:
        (a, length_a), (b, length_b) = geometries
        product, length = a * b, max(length_a, length_b)
    else:
        raise ValueError(f"Simpson's method takes one or two views, got {len(geometries)}")
    return float(math.pi / 4 * product.sum() * length / len(product)) / 1000.0


def clinical_indices(
    ed_masks: Mapping[str, np.ndarray],
    es_masks: Mapping[str, np.ndarray],
    spacings: Mapping[str, tuple[float, float]],
    num_discs: int = 20,
) -> dict[str, float | str]:
    """EDV, ESV (mL) and EF (%) of one patient from its views' ED and ES masks (``{"2CH": mask, "4CH": mask}``);
    biplane when both views are given, single-plane otherwise. NaN where a mask has no usable LV."""
    views = sorted(set(ed_masks) & set(es_masks))
    if not views:
        raise ValueError("clinical_indices needs the ED and ES masks of at least one view")
    try:
        edv = simpson_volume([disc_geometry(ed_masks[v], spacings[v], num_discs) for v in views])
        esv = simpson_volume([disc_geometry(es_masks[v], spacings[v], num_discs) for v in views])
    except ValueError:
        return {"edv": math.nan, "esv": math.nan, "ef": math.nan, "method": "none", "views": "+".join(views)}
    ef = 100.0 * (edv - esv) / edv if edv > 0 else math.nan
    method = "biplane" if len(views) == 2 else "single-plane"
    return {"edv": edv, "esv": esv, "ef": ef, "method": method, "views": "+".join(views)}


def agreement(predicted: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """MAE, bias and 95% limits of agreement (Bland-Altman) of predicted vs reference values (NaN pairs dropped)."""
    predicted, reference = np.asarray(predicted, float), np.asarray(reference, float)
    keep = np.isfinite(predicted) & np.isfinite(reference)
    difference = predicted[keep] - reference[keep]
    if difference.size == 0:
        return {"mae": math.nan, "bias": math.nan, "loa_low": math.nan, "loa_high": math.nan, "count": 0}
    bias, sd = float(difference.mean()), float(difference.std(ddof=1)) if difference.size > 1 else 0.0
    return {
        "mae": float(np.abs(difference).mean()),
        "bias": bias,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "count": int(difference.size),
    }
