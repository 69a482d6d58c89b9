"""Albumentations pipelines applied with one draw of random parameters to every frame (and mask) of a clip.

Albumentations 2 applies a pipeline identically to a sequence when it is called with ``images=`` / ``masks=``, so a
clip stays temporally coherent (no per-frame jitter) and its label masks stay aligned with the pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

if TYPE_CHECKING:  # albumentations is imported where pipelines are built, not by the decoding workers
    import albumentations as A

Box = tuple[int, int, int, int]  # top, bottom, left, right (bottom/right exclusive)
ResizeMode = Literal["stretch", "pad", "crop"]
RESIZE_MODES = ("stretch", "pad", "crop")


def echonet_train_transforms(frame_size: int = 112, pad: int = 12, rotate_limit: float = 0.0) -> A.Compose:
    """EchoNet-Dynamic / CoReEcho training augmentation: zero-pad by ``pad`` pixels, random crop back (+ rotation)."""
    import albumentations as A

    transforms: list = [
        A.PadIfNeeded(min_height=frame_size + 2 * pad, min_width=frame_size + 2 * pad, border_mode=cv2.BORDER_CONSTANT),
        A.RandomCrop(height=frame_size, width=frame_size),
    ]
    if rotate_limit > 0:
        transforms.append(A.Rotate(limit=rotate_limit, border_mode=cv2.BORDER_CONSTANT, p=1.0))
    return A.Compose(transforms)


def apply_to_clip(
    transform: A.BaseCompose | None,
    frames: np.ndarray,
    masks: np.ndarray | None = None,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``transform`` with one parameter draw to grey frames ``(T, H, W)`` and label masks ``(K, H, W)``.

    ``seed`` makes the draw a pure function of the caller's seed, so augmentation is reproducible and resumable.
    """
    if transform is None:
        return frames, masks
    if seed is not None:
        transform.set_random_seed(seed)
    inputs = {"images": np.ascontiguousarray(frames[..., None])}
    if masks is not None:
        inputs["masks"] = np.ascontiguousarray(masks)
    output = transform(**inputs)
    out_masks = np.asarray(output["masks"]) if masks is not None else None
    return np.asarray(output["images"])[..., 0], out_masks


def square_box(height: int, width: int, mode: ResizeMode) -> Box:
    """The region of an ``height x width`` frame that becomes the square output.

    ``stretch``: the whole frame (its aspect changes); ``crop``: the centred square of side ``min(H, W)``;
    ``pad``: the centred square of side ``max(H, W)``, reaching past the frame (the outside is filled with zeros).
    """
    if mode == "stretch" or height == width:
        return 0, height, 0, width
    side = min(height, width) if mode == "crop" else max(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return top, top + side, left, left + side


def _cut(frames: np.ndarray, box: Box) -> np.ndarray:
    """``frames[..., top:bottom, left:right]`` where the box may reach past the frame (zero padding there)."""
    top, bottom, left, right = box
    height, width = frames.shape[-2:]
    if top >= 0 and left >= 0 and bottom <= height and right <= width:
        return frames[..., top:bottom, left:right]
    out = np.zeros((*frames.shape[:-2], bottom - top, right - left), frames.dtype)
    rows = slice(max(top, 0), min(bottom, height))
    cols = slice(max(left, 0), min(right, width))
    out[..., rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = frames[..., rows, cols]
    return out


def fit_square(frames: np.ndarray, size: int, mode: ResizeMode = "stretch", interpolation: int = cv2.INTER_AREA):
    """``(T, H, W)`` frames -> ``(T, size, size)``: stretched, zero-padded to a square or centre-cropped first."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    squared = _cut(frames, square_box(frames.shape[1], frames.shape[2], mode))
    if squared.shape[1:] == (size, size):
        return np.ascontiguousarray(squared)
    return np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=interpolation) for f in squared])


def resize_clip(frames: np.ndarray, size: int, mode: ResizeMode = "stretch") -> np.ndarray:
    """Resize grey frames ``(T, H, W)`` to ``size x size`` (area interpolation: videos of any size collate);
    ``mode`` says how a non-square frame becomes square (:func:`square_box`)."""
    return fit_square(frames, size, mode, cv2.INTER_AREA)


def resize_masks(masks: np.ndarray, size: int, mode: ResizeMode = "stretch") -> np.ndarray:
    """Resize label masks ``(K, H, W)`` by nearest neighbour so labels stay labels (same geometry as the frames)."""
    return fit_square(masks, size, mode, cv2.INTER_NEAREST)


def content_box(frame: np.ndarray) -> Box:
    """Bounding box of the non-zero pixels of a frame (the whole frame when it is all zero)."""
    rows = np.flatnonzero(frame.any(axis=1))
    cols = np.flatnonzero(frame.any(axis=0))
    if len(rows) == 0:
        return 0, frame.shape[0], 0, frame.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_and_resize(
    frames: np.ndarray, box: Box, size: int, interpolation: int = cv2.INTER_AREA, mode: ResizeMode = "stretch"
) -> np.ndarray:
    """``(T, H, W)`` frames cut to ``box`` and made ``size x size`` (``mode`` as in :func:`fit_square`)."""
    top, bottom, left, right = box
    return np.ascontiguousarray(fit_square(frames[:, top:bottom, left:right], size, mode, interpolation))
