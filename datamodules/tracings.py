"""EchoNet-style LV tracings: (N + 1, 4) arrays of rows X1, Y1, X2, Y2.

Row 0 is the long axis (apex point, mitral-annulus midpoint); rows 1.. are the chords perpendicular to it. The LV
mask is the polygon through the chords' first endpoints followed by their second endpoints in reverse order, exactly
as EchoNet-Dynamic builds it; the volume is the single-plane method of discs over the chords.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_SHIFT = 8  # cv2 fixed-point bits: vertices are placed to 1/256 pixel


def _check(tracing: np.ndarray) -> np.ndarray:
    tracing = np.asarray(tracing, dtype=np.float64)
    if tracing.ndim != 2 or tracing.shape[1] != 4 or tracing.shape[0] < 3:
        raise ValueError(
            f"a tracing must be an (N + 1, 4) array of rows X1, Y1, X2, Y2 with N >= 2 chords, not {tracing.shape}"
        )
    return tracing


def tracing_polygon(tracing: np.ndarray) -> np.ndarray:
    """(2N, 2) polygon vertices (x, y): (X1[1:], reversed X2[1:]), (Y1[1:], reversed Y2[1:])."""
    tracing = _check(tracing)
    x = np.concatenate([tracing[1:, 0], tracing[:0:-1, 2]])
    y = np.concatenate([tracing[1:, 1], tracing[:0:-1, 3]])
    return np.stack([x, y], axis=1)


def mask_from_tracing(tracing: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool (height, width) LV mask: the filled tracing polygon, vertices placed to sub-pixel precision."""
    polygon = tracing_polygon(tracing)
    canvas = np.zeros((int(height), int(width)), dtype=np.uint8)
    points = np.round(polygon * (1 << _SHIFT)).astype(np.int32).reshape(1, -1, 2)
    cv2.fillPoly(canvas, points, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(bool)


def volume_from_tracing(tracing: np.ndarray) -> float:
    """Method-of-discs volume in pixel^3: sum over chords of pi/4 * chord_length^2 * (long_axis_length / num_chords)."""
    tracing = _check(tracing)
    axis_length = math.hypot(tracing[0, 2] - tracing[0, 0], tracing[0, 3] - tracing[0, 1])
    chords = tracing[1:]
    chord_sq = (chords[:, 2] - chords[:, 0]) ** 2 + (chords[:, 3] - chords[:, 1]) ** 2
    return float(math.pi / 4.0 * chord_sq.sum() * axis_length / len(chords))


def tracing_area(tracing: np.ndarray) -> float:
    """Area (pixel^2) of the tracing polygon (shoelace); ED is the larger of a video's two traced frames."""
    polygon = tracing_polygon(tracing)
    x, y = polygon[:, 0], polygon[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
