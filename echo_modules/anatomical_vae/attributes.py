"""Shape attributes of a segmentation that the AR-VAE ties to its first latent dims (Painchaud et al., TMI 2022).

lv_area, myo_area (mm^2); lv_base_width (mm between the two corners of the LV base), lv_length (mm from the base
midpoint to the apex), lv_orientation (degrees of the apex-to-base axis from vertical, positive leaning right);
epi_center_x, epi_center_y (mm, centroid of LV + MYO). Base corners and apex are found as in the phantom's method
of discs: the principal axis of the LV, the corners as the LV points farthest along (axis +/- normal), the apex as the
LV point farthest from the base midpoint. A frame without LV (or MYO) gives NaN for what needs it.
"""

from __future__ import annotations

import numpy as np

ATTRIBUTES = ("lv_area", "lv_base_width", "lv_length", "lv_orientation", "myo_area", "epi_center_x", "epi_center_y")
LV, MYO = 1, 2


def _lv_geometry(lv: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float, float]:
    rows, cols = np.nonzero(lv)
    if rows.size < 3:
        return np.nan, np.nan, np.nan
    points = np.stack([cols * spacing[1], rows * spacing[0]], axis=1).astype(np.float64)
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    down = vectors[:, 1]
    if down[1] < 0:
        down = -down
    side = np.array([down[1], -down[0]])
    corner_a = points[np.argmax(points @ (down + side))]
    corner_b = points[np.argmax(points @ (down - side))]
    base_mid = 0.5 * (corner_a + corner_b)
    apex = points[np.argmax(np.linalg.norm(points - base_mid, axis=1))]
    axis = base_mid - apex
    return (
        float(np.linalg.norm(corner_a - corner_b)),
        float(np.linalg.norm(axis)),
        float(np.degrees(np.arctan2(axis[0], axis[1]))),
    )


def compute_attributes(masks: np.ndarray, spacing: tuple[float, float] | np.ndarray = (1.0, 1.0)) -> np.ndarray:
    """``(N, 7)`` float attributes (order of :data:`ATTRIBUTES`) of ``(N, H, W)`` label maps.

    spacing: (row, col) mm, one pair for all frames or ``(N, 2)`` per frame.
    """
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    frames = len(masks)
    spacing = np.broadcast_to(np.asarray(spacing, np.float64).reshape(-1, 2), (frames, 2))
    lv, myo = masks == LV, masks == MYO
    epi = lv | myo
    out = np.full((frames, len(ATTRIBUTES)), np.nan)
    pixel_area = spacing[:, 0] * spacing[:, 1]
    lv_pixels = lv.reshape(frames, -1).sum(axis=1)
    myo_pixels = myo.reshape(frames, -1).sum(axis=1)
    out[:, 0] = np.where(lv_pixels > 0, lv_pixels * pixel_area, np.nan)
    out[:, 4] = np.where(myo_pixels > 0, myo_pixels * pixel_area, np.nan)
    epi_pixels = epi.reshape(frames, -1).sum(axis=1)
    rows = np.arange(masks.shape[1])[None, :, None]
    cols = np.arange(masks.shape[2])[None, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 5] = (epi * cols).reshape(frames, -1).sum(axis=1) / epi_pixels * spacing[:, 1]
        out[:, 6] = (epi * rows).reshape(frames, -1).sum(axis=1) / epi_pixels * spacing[:, 0]
    for index in range(frames):
        out[index, 1:4] = _lv_geometry(lv[index], tuple(spacing[index]))
    return out
