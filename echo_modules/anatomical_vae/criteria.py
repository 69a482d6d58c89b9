"""The 12 CAMUS anatomical validity criteria (Painchaud et al., TMI 2020), vectorised over a stack of frames.

Labels follow CAMUS: 0 background, 1 LV cavity, 2 myocardium, 3 left atrium; frames are upright (apex on top).
Every criterion is computed for a whole ``(N, H, W)`` stack at once: connected components are labelled with one
``scipy.ndimage.label`` call whose structuring element links pixels inside a frame only (never across frames), and
per-frame sums come from ``np.bincount``; only the erosion-before-split criterion loops, over depth levels, not frames.

Count criteria pass only at 0: holes in the LV, the LA and the epicardium (LV + MYO); pixels outside the largest
8-connected blob of LV, MYO and LA; the gap between LV and MYO and the gap between LV and LA (each counted only above
a small tolerance, ``H * W / 2**14`` pixels as in vital, or ``gap_tolerance_mm2`` when pixel spacing is known).
Ratio criteria: the erosion depth needed to split the MYO over its maximal thickness (>= ``erosion_ratio_min``), the
LV width over the MYO width on the row of their joint centroid (<= ``width_ratio_max``), LV pixels touching the
background over the LV bounding-box width (<= ``lv_background_frontier_max``) and MYO pixels touching the LA over the
MYO bounding-box width (<= ``myo_atrium_frontier_max``). A structure that is missing makes its criteria NaN: invalid.

Deviations from vital, on purpose: the LV-LA gap is the gap between LV and LA (vital recomputes the LV-MYO one); it
is the set of background pixels enclosed by LV + MYO + LA (each with its own holes filled) whose component touches
both the LV and the LA. Erosion depth is measured on a Euclidean distance map in mm (``pixel_spacing``), so
anisotropic pixels erode as a disc of physical radius; with square pixels ``k`` levels equal ``k`` disc erosions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

BACKGROUND, LV, MYO, LA = 0, 1, 2, 3

COUNT_CRITERIA = (
    "holes_in_lv",
    "holes_in_la",
    "holes_in_epi",
    "disconnected_lv",
    "disconnected_myo",
    "disconnected_la",
    "holes_between_lv_myo",
    "holes_between_lv_la",
)
RATIO_CRITERIA = (
    "erosion_ratio_myo",
    "width_ratio_lv_myo",
    "frontier_ratio_lv_background",
    "frontier_ratio_myo_la",
)
CRITERIA = COUNT_CRITERIA + RATIO_CRITERIA

_PLANE_8 = np.zeros((3, 3, 3), bool)
_PLANE_8[1] = True  # 8-connectivity inside a frame, none across frames
_PLANE_4 = np.zeros((3, 3, 3), bool)
_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class CriteriaThresholds:
    """Pass ranges of the ratio criteria (vital's values) and the tolerance of the gap criteria."""

    erosion_ratio_min: float = 0.12
    width_ratio_max: float = 4.15
    lv_background_frontier_max: float = 0.4
    myo_atrium_frontier_max: float = 0.11
    gap_tolerance_fraction: float = 2.0**-14  # of H * W pixels, as vital's small-object size
    gap_tolerance_mm2: float | None = None  # when set, replaces the fraction (needs the pixel spacing)


@dataclass
class CriteriaResult:
    """Per-frame criterion values ``(N,)`` each, which failed ``(N, 12)`` and the verdict ``(N,)``."""

    values: dict[str, np.ndarray]
    failed: np.ndarray
    valid: np.ndarray
    names: tuple[str, ...] = field(default=CRITERIA)

    def failed_names(self, index: int) -> list[str]:
        return [name for name, bad in zip(self.names, self.failed[index], strict=True) if bad]


# ---------------------------------------------------------------------------------------------------- components


def _frame_of_labels(labels: np.ndarray, count: int) -> np.ndarray:
    """Frame index of each component label (index 0 = no component, -1)."""
    frame_of = np.full(count + 1, -1, np.int64)
    frames = np.broadcast_to(np.arange(labels.shape[0])[:, None, None], labels.shape)
    on = labels > 0
    frame_of[labels[on]] = frames[on]
    return frame_of


def _per_frame_sum(mask: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape[0], -1).sum(axis=1)


def _holes(struct: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Boolean ``(N, H, W)``: pixels outside ``struct`` not connected (by ``structure``) to the frame border."""
    outside = np.pad(~struct, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    labels, _ = ndimage.label(outside, structure=structure)
    border = labels[:, 0, 0]  # the padding ring is one component per frame
    return (labels != border[:, None, None])[:, 1:-1, 1:-1] & (labels[:, 1:-1, 1:-1] > 0)


def _disconnected(struct: np.ndarray) -> np.ndarray:
    """Pixels of ``struct`` outside its largest 8-connected blob, per frame."""
    labels, count = ndimage.label(struct, structure=_PLANE_8)
    if count == 0:
        return np.zeros(len(struct), np.int64)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    frame_of = _frame_of_labels(labels, count)
    largest = np.zeros(len(struct), np.int64)
    np.maximum.at(largest, frame_of[1:], sizes[1:])
    return _per_frame_sum(struct) - largest


def _holes_without(struct: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Holes (4-connected) of ``struct`` whose component contains no pixel of ``other``."""
    holes = _holes(struct, _PLANE_4)
    labels, count = ndimage.label(holes, structure=_PLANE_4)
    touched = np.zeros(count + 1, bool)
    touched[np.unique(labels[other & (labels > 0)])] = True
    touched[0] = True
    return ~touched[labels]


def _gap_components(union: np.ndarray) -> tuple[np.ndarray, int]:
    """Labelled (4-connected) holes of ``union``."""
    return ndimage.label(_holes(union, _PLANE_4), structure=_PLANE_4)


def _touching(labels: np.ndarray, count: int, struct: np.ndarray) -> np.ndarray:
    """Which component labels are 8-adjacent to ``struct`` (index 0 False)."""
    near = ndimage.binary_dilation(struct, structure=_PLANE_8)
    touched = np.zeros(count + 1, bool)
    touched[np.unique(labels[near & (labels > 0)])] = True
    touched[0] = False
    return touched


def _frontier(struct: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Pixels of ``struct`` 8-adjacent to ``other`` per frame (0 when at most one, as vital)."""
    count = _per_frame_sum(struct & ndimage.binary_dilation(other, structure=_PLANE_8))
    return np.where(count > 1, count, 0)


def _bbox_width(struct: np.ndarray) -> np.ndarray:
    """Column extent (pixels) of ``struct`` per frame; 0 when absent."""
    columns = struct.any(axis=1)  # (N, W)
    present = columns.any(axis=1)
    first = columns.argmax(axis=1)
    last = columns.shape[1] - 1 - columns[:, ::-1].argmax(axis=1)
    return np.where(present, last - first + 1, 0)


def _erosion_ratio(myo: np.ndarray, spacing: tuple[float, float], min_size: float) -> np.ndarray:
    """Erosion depth that first splits (or empties) the MYO over its maximal thickness, per frame (NaN if absent).

    Square pixels (see :func:`_square_pixels`). Depth level ``k`` keeps the pixels farther than ``k`` pixels from
    the background on a Euclidean distance map; fragments smaller than ``min_size`` pixels are dropped at every level, as vital
    drops the crumbs its square erosions leave.
    """
    frames = len(myo)
    padded = np.pad(myo, ((0, 0), (1, 1), (1, 1)))  # background all around: the border is not tissue
    distance = np.stack([ndimage.distance_transform_edt(frame) for frame in padded])[:, 1:-1, 1:-1] * spacing[0]
    thickest = distance.reshape(frames, -1).max(axis=1)
    step = min(spacing)
    ratio = np.full(frames, np.nan)
    pending = thickest > 0
    level = 0
    while pending.any():
        kept = (distance > level * step) & pending[:, None, None]
        labels, count = ndimage.label(kept, structure=_PLANE_8)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        big = sizes >= min_size
        big[0] = False
        frame_of = _frame_of_labels(labels, count)
        pieces = np.bincount(frame_of[1:][big[1:]], minlength=frames)
        done = pending & (pieces != 1)
        ratio[done] = level * step / thickest[done]
        pending &= ~done
        level += 1
    return ratio


def _square_pixels(masks: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float], float]:
    """Masks resampled (nearest) so both axes have the finer spacing; returns them, the spacing, the area factor."""
    fine = min(spacing)
    if abs(spacing[0] - spacing[1]) <= 1e-3 * fine:
        return masks, (float(spacing[0]), float(spacing[0])), 1.0
    out = masks
    for axis, size in ((1, spacing[0]), (2, spacing[1])):
        factor = size / fine
        if factor > 1 + 1e-3:
            count = int(round(out.shape[axis] * factor))
            source = np.minimum(((np.arange(count) + 0.5) / factor).astype(np.int64), out.shape[axis] - 1)
            out = np.take(out, source, axis=axis)
    return out, (fine, fine), out.shape[1] * out.shape[2] / (masks.shape[1] * masks.shape[2])


def _crop_to_foreground(masks: np.ndarray) -> np.ndarray:
    """The stack cropped to the box of all its foreground pixels plus one background pixel on each side."""
    foreground = masks.any(axis=0)
    rows, cols = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if rows.size == 0:
        return masks
    top, bottom = max(rows[0] - 1, 0), min(rows[-1] + 2, masks.shape[1])
    left, right = max(cols[0] - 1, 0), min(cols[-1] + 2, masks.shape[2])
    return masks[:, top:bottom, left:right]


# ---------------------------------------------------------------------------------------------------- criteria


def compute_criteria(
    masks: np.ndarray,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    thresholds: CriteriaThresholds | None = None,
) -> CriteriaResult:
    """Evaluate the 12 criteria on ``masks`` ``(N, H, W)`` (or one ``(H, W)``) with labels 0-3.

    pixel_spacing: (row, column) pixel size in mm. Anisotropic masks are first resampled (nearest neighbour) to
        square pixels of the finer size, so every criterion measures physical shapes; the gap tolerance may be in mm^2.
    """
    thresholds = thresholds or CriteriaThresholds()
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) or (H, W), got shape {masks.shape}")
    masks, pixel_spacing, _ = _square_pixels(masks, pixel_spacing)
    frames, height, width = masks.shape[0], masks.shape[1], masks.shape[2]
    masks = _crop_to_foreground(masks)  # exact: outside the foreground box everything is background
    lv, myo, la = masks == LV, masks == MYO, masks == LA
    background = masks == BACKGROUND
    epi = lv | myo
    has_lv, has_myo, has_la = (_per_frame_sum(s) > 0 for s in (lv, myo, la))
    if thresholds.gap_tolerance_mm2 is not None:
        tolerance = thresholds.gap_tolerance_mm2 / (pixel_spacing[0] * pixel_spacing[1])
    else:
        tolerance = height * width * thresholds.gap_tolerance_fraction
    small_objects = height * width * 2.0**-14

    values: dict[str, np.ndarray] = {}
    values["holes_in_lv"] = _per_frame_sum(_holes(lv, _PLANE_8))
    values["holes_in_la"] = _per_frame_sum(_holes(la, _PLANE_8))
    values["holes_in_epi"] = _per_frame_sum(_holes(epi, _PLANE_8))
    values["disconnected_lv"] = _disconnected(lv)
    values["disconnected_myo"] = _disconnected(myo)
    values["disconnected_la"] = _disconnected(la)

    # LV-MYO gap: background enclosed by LV + MYO once each one's own holes (not holding the other) are filled
    union = lv | myo | _holes_without(lv, myo) | _holes_without(myo, lv)
    gap = _per_frame_sum(_holes(union, _PLANE_4))
    values["holes_between_lv_myo"] = np.where(gap > tolerance, gap, 0)

    # LV-LA gap: background enclosed by LV + MYO + LA whose component touches both the LV and the LA
    union = union | la | _holes_without(la, lv)
    labels, count = _gap_components(union)
    between = _touching(labels, count, lv) & _touching(labels, count, la)
    gap = _per_frame_sum(between[labels])
    values["holes_between_lv_la"] = np.where(gap > tolerance, gap, 0)

    values["erosion_ratio_myo"] = _erosion_ratio(myo, pixel_spacing, small_objects)

    joint = lv | myo
    rows = np.arange(joint.shape[1])[None, :]
    joint_rows = joint.sum(axis=2)  # (N, H)
    centroid = (joint_rows * rows).sum(axis=1) / np.maximum(joint_rows.sum(axis=1), 1)
    centre_row = centroid.astype(np.int64)
    pick = np.arange(frames)
    lv_width = lv[pick, centre_row].sum(axis=1).astype(np.float64)
    myo_width = myo[pick, centre_row].sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        values["width_ratio_lv_myo"] = np.where((lv_width > 0) & (myo_width > 0), lv_width / myo_width, np.nan)
        values["frontier_ratio_lv_background"] = np.where(
            has_lv, _frontier(lv, background) / np.maximum(_bbox_width(lv), 1), np.nan
        )
        values["frontier_ratio_myo_la"] = np.where(
            has_myo & has_la, _frontier(myo, la) / np.maximum(_bbox_width(myo), 1), np.nan
        )

    # a missing structure makes the criteria that look at it NaN
    needs = {
        "holes_in_lv": has_lv,
        "holes_in_la": has_la,
        "holes_in_epi": has_lv & has_myo,
        "disconnected_lv": has_lv,
        "disconnected_myo": has_myo,
        "disconnected_la": has_la,
        "holes_between_lv_myo": has_lv & has_myo,
        "holes_between_lv_la": has_lv & has_la,
    }
    for name, present in needs.items():
        values[name] = np.where(present, values[name].astype(np.float64), np.nan)

    failed = np.stack([_fails(name, values[name], thresholds) for name in CRITERIA], axis=1)
    return CriteriaResult(values=values, failed=failed, valid=~failed.any(axis=1))


def _fails(name: str, value: np.ndarray, thresholds: CriteriaThresholds) -> np.ndarray:
    missing = np.isnan(value)
    safe = np.nan_to_num(value)
    if name in COUNT_CRITERIA:
        bad = safe != 0
    elif name == "erosion_ratio_myo":
        bad = safe < thresholds.erosion_ratio_min
    elif name == "width_ratio_lv_myo":
        bad = safe > thresholds.width_ratio_max
    elif name == "frontier_ratio_lv_background":
        bad = safe > thresholds.lv_background_frontier_max
    else:
        bad = safe > thresholds.myo_atrium_frontier_max
    return missing | bad


def is_valid(masks: np.ndarray, pixel_spacing: tuple[float, float] = (1.0, 1.0), **kwargs) -> np.ndarray:
    """Boolean ``(N,)`` verdicts (see :func:`compute_criteria`)."""
    thresholds = CriteriaThresholds(**kwargs) if kwargs else None
    return compute_criteria(masks, pixel_spacing, thresholds).valid


# ---------------------------------------------------------------------------------------------------- naive reference


def naive_criteria(
    mask: np.ndarray, pixel_spacing: tuple[float, float] = (1.0, 1.0), thresholds: CriteriaThresholds | None = None
) -> dict[str, float]:
    """The same 12 values for one ``(H, W)`` frame, written the direct way (one scipy call per structure, loops over
    components and erosion depths, as vital does). The reference :func:`compute_criteria` is tested against, and the
    per-frame baseline of ``benchmarks/anatomical_vae.py``."""
    thresholds = thresholds or CriteriaThresholds()
    squared, pixel_spacing, _ = _square_pixels(np.asarray(mask)[None], pixel_spacing)
    mask = squared[0]
    height, width = mask.shape
    eight, four = np.ones((3, 3), bool), ndimage.generate_binary_structure(2, 1)
    lv, myo, la, background = mask == LV, mask == MYO, mask == LA, mask == BACKGROUND

    def holes(struct, structure):
        return ndimage.binary_fill_holes(struct, structure=structure) & ~struct

    def disconnected(struct):
        labels, count = ndimage.label(struct, structure=eight)
        sizes = [int((labels == i).sum()) for i in range(1, count + 1)]
        return float(sum(sizes) - max(sizes)) if sizes else np.nan

    def holes_without(struct, other):
        labels, count = ndimage.label(holes(struct, four), structure=four)
        return np.isin(labels, [i for i in range(1, count + 1) if not (other & (labels == i)).any()])

    tolerance = (
        thresholds.gap_tolerance_mm2 / (pixel_spacing[0] * pixel_spacing[1])
        if thresholds.gap_tolerance_mm2 is not None
        else height * width * thresholds.gap_tolerance_fraction
    )
    out: dict[str, float] = {}
    out["holes_in_lv"] = float(holes(lv, eight).sum()) if lv.any() else np.nan
    out["holes_in_la"] = float(holes(la, eight).sum()) if la.any() else np.nan
    out["holes_in_epi"] = float(holes(lv | myo, eight).sum()) if lv.any() and myo.any() else np.nan
    out["disconnected_lv"], out["disconnected_myo"], out["disconnected_la"] = map(disconnected, (lv, myo, la))
    union = lv | myo | holes_without(lv, myo) | holes_without(myo, lv)
    gap = float(holes(union, four).sum())
    out["holes_between_lv_myo"] = (gap if gap > tolerance else 0.0) if lv.any() and myo.any() else np.nan
    union = union | la | holes_without(la, lv)
    labels, count = ndimage.label(holes(union, four), structure=four)
    near_lv, near_la = ndimage.binary_dilation(lv, eight), ndimage.binary_dilation(la, eight)
    gap = float(sum((labels == i).sum() for i in range(1, count + 1) if (near_lv & (labels == i)).any()
                    and (near_la & (labels == i)).any()))  # fmt: skip
    out["holes_between_lv_la"] = (gap if gap > tolerance else 0.0) if lv.any() and la.any() else np.nan

    ratio = np.nan
    if myo.any():
        distance = ndimage.distance_transform_edt(np.pad(myo, 1), sampling=pixel_spacing)[1:-1, 1:-1]
        step, level = min(pixel_spacing), 0
        while True:
            labels, count = ndimage.label(distance > level * step, structure=eight)
            pieces = sum(1 for i in range(1, count + 1) if (labels == i).sum() >= height * width * 2.0**-14)
            if pieces != 1:
                ratio = level * step / distance.max()
                break
            level += 1
    out["erosion_ratio_myo"] = ratio
    joint = lv | myo
    row = int(ndimage.center_of_mass(joint)[0]) if joint.any() else 0
    lv_width, myo_width = float(lv[row].sum()), float(myo[row].sum())
    out["width_ratio_lv_myo"] = lv_width / myo_width if lv_width and myo_width else np.nan

    def frontier_ratio(struct, other):
        count = int((struct & ndimage.binary_dilation(other, eight)).sum())
        columns = np.flatnonzero(struct.any(axis=0))
        return (count if count > 1 else 0) / (columns[-1] - columns[0] + 1)

    out["frontier_ratio_lv_background"] = frontier_ratio(lv, background) if lv.any() else np.nan
    out["frontier_ratio_myo_la"] = frontier_ratio(myo, la) if myo.any() and la.any() else np.nan
    return out
