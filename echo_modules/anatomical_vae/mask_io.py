"""Segmentation files in and out: NIfTI / MHD (CAMUS layouts), PNG and NPY, as upright ``(T, H, W)`` uint8 labels.

NIfTI and MHD carry their pixel spacing (x first in the files; returned here as (row, column) mm). PNG and NPY carry
none: the caller's default is used. A PNG may hold the labels 0-3 directly or scaled to 0/85/170/255 (a common way to
make label maps visible); both read as 0-3. Writing keeps the input's format, so corrected masks replace originals.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datamodules.errors import DataError

MASK_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".png", ".npy")


def mask_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in MASK_SUFFIXES if name.endswith(suffix)), None)


def find_mask_files(folder: str | Path) -> list[Path]:
    """Every mask file under ``folder`` (recursively, sorted); a DataError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of segmentations")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and mask_suffix(p) is not None)
    if not files:
        raise DataError(f"{folder}: no segmentation files ({', '.join(MASK_SUFFIXES)}) found")
    return files


def read_masks(path: str | Path, default_spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, tuple]:
    """``(T, H, W)`` uint8 labels and the (row, column) pixel spacing in mm. DataError naming the file if unusable."""
    path = Path(path)
    suffix = mask_suffix(path)
    try:
        if suffix in (".nii.gz", ".nii"):
            import nibabel as nib

            image = nib.load(str(path))
            array = np.asanyarray(image.dataobj)
            zooms = image.header.get_zooms()
            spacing = (float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else default_spacing
            array = array.T if array.ndim == 2 else np.transpose(array[..., 0] if array.ndim == 4 else array, (2, 1, 0))
        elif suffix == ".mhd":
            from datamodules.nifti import read_metaimage

            array, element_spacing = read_metaimage(path)
            spacing = (
                (float(element_spacing[1]), float(element_spacing[0])) if len(element_spacing) >= 2 else default_spacing
            )
        elif suffix == ".png":
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise ValueError("cannot be decoded as PNG")
            if array.ndim == 3:
                array = array[..., 0]
            values = set(np.unique(array).tolist())
            if values <= {0, 85, 170, 255} and max(values) > 3:
                array = array // 85
            spacing = default_spacing
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            spacing = default_spacing
        else:
            raise ValueError(f"unknown mask format (expected one of {', '.join(MASK_SUFFIXES)})")
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: cannot be read ({' '.join(str(error).split())[:200]})") from error
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] == 0:
        raise DataError(f"{path}: expected a (H, W) mask or a (T, H, W) sequence, found shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.allclose(array, np.round(array)):
        raise DataError(f"{path}: holds non-integer values; expected labels 0-3")
    labels = np.round(array).astype(np.int64)
    if labels.min() < 0 or labels.max() > 3:
        raise DataError(
            f"{path}: label values {labels.min()}..{labels.max()} are outside 0-3 (0 BG, 1 LV, 2 MYO, 3 LA)"
        )
    return np.ascontiguousarray(labels.astype(np.uint8)), spacing


def write_masks(path: str | Path, masks: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Path:
    """Write ``(T, H, W)`` labels in the format ``path``'s suffix names (a single frame is written 2-D)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    masks = np.asarray(masks, np.uint8)
    frame_or_stack = masks[0] if masks.shape[0] == 1 else masks
    suffix = mask_suffix(path)
    xy_spacing = (spacing[1], spacing[0])
    if suffix in (".nii.gz", ".nii"):
        from datamodules.nifti import write_nifti

        write_nifti(path, frame_or_stack, xy_spacing)
    elif suffix == ".mhd":
        from datamodules.nifti import write_metaimage

        write_metaimage(path, frame_or_stack, xy_spacing + ((1.0,) if frame_or_stack.ndim == 3 else ()))
    elif suffix == ".png":
        if frame_or_stack.ndim != 2:
            raise DataError(f"{path}: a PNG holds one frame, got {masks.shape[0]}")
        cv2.imwrite(str(path), frame_or_stack)
    elif suffix == ".npy":
        np.save(path, frame_or_stack)
    else:
        raise DataError(f"{path}: unknown mask format (expected one of {', '.join(MASK_SUFFIXES)})")
    return path
