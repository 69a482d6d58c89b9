"""Albumentations pipelines applied with one draw of random parameters to every frame (and mask) of a clip.

Albumentations 2 applies a pipeline identically to a sequence when it is called with ``images=`` / ``masks=``, so a
clip stays temporally coherent (no per-frame jitter) and its label masks stay aligned with the pixels.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np


def echonet_train_transforms(frame_size: int = 112, pad: int = 12, rotate_limit: float = 0.0) -> A.Compose:
    """EchoNet-Dynamic / CoReEcho training augmentation: zero-pad by ``pad`` pixels, random crop back (+ rotation)."""
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


def resize_clip(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize grey frames ``(T, H, W)`` to ``size x size`` (area interpolation: videos of any size collate)."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames])


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Resize label masks ``(K, H, W)`` by nearest neighbour so labels stay labels."""
    if masks.shape[1] == size and masks.shape[2] == size:
        return masks
    return np.stack([cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) for mask in masks])
