"""NIfTI and MetaImage (MHD/RAW) image sequences as grey uint8 ``(T, H, W)`` frames, upright as clinicians view them.

CAMUS (2023) and CardiacNet store sequences in NIfTI as ``(W, H, T)`` arrays (x first); transposing to ``(T, H, W)``
puts the apex at the top, as the releases' own previews show. The 2019 CAMUS release stores MetaImage files: a text
header (``DimSize = W H T``, ``ElementType``, ``ElementDataFile``) and raw x-fastest data, which read in C order is
already ``(T, H, W)``. MetaImage is parsed here (no SimpleITK needed). The writers are the inverse, for the phantom.

These releases store frames far larger than models see them (CAMUS ~780x550, CardiacNet ~720p), so their DataModules
use :class:`datamodules.cache.ResizedVideoCache` (re-exported here): the decoded cache, but each sequence is (optionally
cropped to its content and) resized to the training frame size once, when it is decoded, instead of on every item.
Importing this module registers the NIfTI / MetaImage reader with :mod:`datamodules.cache`.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from datamodules.cache import ResizedVideoCache, VideoInfo, register_reader  # noqa: F401  (ResizedVideoCache: re-export)
from datamodules.transforms import Box, content_box, crop_and_resize  # noqa: F401  (re-exported for the readers)

# MetaImage element types -> numpy dtypes (little-endian unless the header says MSB)
_MET_TYPES = {
    "MET_UCHAR": np.uint8,
    "MET_CHAR": np.int8,
    "MET_USHORT": np.uint16,
    "MET_SHORT": np.int16,
    "MET_UINT": np.uint32,
    "MET_INT": np.int32,
    "MET_ULONG_LONG": np.uint64,
    "MET_LONG_LONG": np.int64,
    "MET_FLOAT": np.float32,
    "MET_DOUBLE": np.float64,
}
_DTYPE_TO_MET = {np.dtype(v): k for k, v in _MET_TYPES.items()}


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Intensities as uint8: kept when already 0-255 integers, else min-max scaled."""
    if array.dtype == np.uint8:
        return array
    array = np.asarray(array, dtype=np.float32)
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 255 and np.allclose(array, np.round(array)):
        return array.astype(np.uint8)
    return ((array - low) / max(high - low, 1e-6) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- MetaImage


def read_metaimage_header(path: str | Path) -> tuple[dict[str, str], int]:
    """``Key = Value`` fields of a MetaImage header and the byte offset where the header ends (for LOCAL data)."""
    path = Path(path)
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as handle:
        for raw_line in handle:
            offset += len(raw_line)
            line = raw_line.decode("latin-1").strip()
            if not line:
                continue
            if "=" not in line:
                raise ValueError(f"header line {line[:60]!r} is not 'Key = Value'")
            key, value = (part.strip() for part in line.split("=", 1))
            fields[key] = value
            if key == "ElementDataFile":  # always the last field of a header
                break
    if "DimSize" not in fields or "ElementType" not in fields or "ElementDataFile" not in fields:
        raise ValueError("header lacks DimSize, ElementType or ElementDataFile")
    return fields, offset


def read_metaimage(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A MetaImage file as a numpy array in C order (``(T, H, W)`` for a sequence, ``(H, W)`` for an image) and its
    element spacing (x first, as in the header). Raises ``ValueError`` naming what is wrong."""
    path = Path(path)
    fields, header_end = read_metaimage_header(path)
    shape_xyz = [int(v) for v in fields["DimSize"].split()]
    element_type = fields["ElementType"].upper()
    if element_type not in _MET_TYPES:
        raise ValueError(f"unsupported ElementType {element_type}")
    dtype = np.dtype(_MET_TYPES[element_type])
    msb = fields.get("ElementByteOrderMSB", fields.get("BinaryDataByteOrderMSB", "False")).lower() == "true"
    dtype = dtype.newbyteorder(">" if msb else "<")
    channels = int(fields.get("ElementNumberOfChannels", "1"))
    count = int(np.prod(shape_xyz)) * channels
    data_name = fields["ElementDataFile"]
    if data_name.upper() == "LOCAL":
        raw = path.read_bytes()[header_end:]
    elif data_name.upper().startswith("LIST") or "%" in data_name:
        raise ValueError(f"ElementDataFile {data_name!r}: multi-file MetaImage data is not supported")
    else:
        data_path = path.parent / data_name
        if not data_path.is_file():
            raise ValueError(f"its data file {data_path.name} is missing")
        raw = data_path.read_bytes()
    header_size = int(fields.get("HeaderSize", "0"))
    if header_size > 0:
        raw = raw[header_size:]
    elif header_size == -1:  # data is at the end of the file
        raw = raw[len(raw) - count * dtype.itemsize :]
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            raw = zlib.decompress(raw)
        except zlib.error as error:
            raise ValueError(f"compressed data cannot be inflated ({error})") from error
    needed = count * dtype.itemsize
    if len(raw) < needed:
        raise ValueError(f"truncated: {len(raw)} data bytes, the header needs {needed}")
    array = np.frombuffer(raw[:needed], dtype=dtype).astype(dtype.newbyteorder("="))
    shape = tuple(reversed(shape_xyz)) + ((channels,) if channels > 1 else ())
    spacing = tuple(float(v) for v in fields.get("ElementSpacing", " ".join(["1"] * len(shape_xyz))).split())
    return array.reshape(shape), spacing


def write_metaimage(path: str | Path, array: np.ndarray, spacing: tuple[float, ...] | None = None) -> Path:
    """Write a C-order array (``(T, H, W)`` or ``(H, W)``) as ``path`` (.mhd header) + a .raw file beside it."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in _DTYPE_TO_MET:
        raise ValueError(f"cannot write dtype {array.dtype} as MetaImage")
    dims = list(reversed(array.shape))
    spacing = tuple(spacing) if spacing is not None else (1.0,) * len(dims)
    raw_path = path.with_suffix(".raw")
    lines = [
        "ObjectType = Image",
        f"NDims = {len(dims)}",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        "TransformMatrix = " + " ".join("1" if i == j else "0" for i in range(len(dims)) for j in range(len(dims))),
        "Offset = " + " ".join("0" for _ in dims),
        "AnatomicalOrientation = " + "RAI"[: len(dims)],
        "ElementSpacing = " + " ".join(f"{s:g}" for s in spacing),
        "DimSize = " + " ".join(str(d) for d in dims),
        f"ElementType = {_DTYPE_TO_MET[array.dtype]}",
        f"ElementDataFile = {raw_path.name}",
    ]
    raw_path.write_bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- NIfTI


def write_nifti(path: str | Path, frames: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Path:
    """Write upright ``(T, H, W)`` frames (or one ``(H, W)`` image) as NIfTI ``(W, H, T)`` / ``(W, H)``, as the
    CAMUS 2023 and CardiacNet releases store them. ``spacing`` is the pixel size (x, y) in mm."""
    import nibabel as nib

    frames = np.asarray(frames)
    data = frames.T if frames.ndim == 2 else np.transpose(frames, (2, 1, 0))
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_zooms((spacing[0], spacing[1]) + ((1.0,) if data.ndim == 3 else ()))
    nib.save(image, str(path))
    return Path(path)


def load_sequence_array(path: str | Path) -> tuple[np.ndarray, float]:
    """Raw ``(T, H, W)`` (``(1, H, W)`` for a single image) array and the frame rate from the header (nan if absent)."""
    path = Path(path)
    if str(path).lower().endswith(".mhd"):
        array, _ = read_metaimage(path)
        if array.ndim == 4:  # (T, H, W, C) colour: keep the first channel
            array = array[..., 0]
        return (array[None] if array.ndim == 2 else array), float("nan")
    import nibabel as nib

    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 4:  # (W, H, T, C) colour sequences: keep the first channel
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"expected a 2D image or a (W, H, T) sequence, found shape {array.shape}")
    zooms = image.header.get_zooms()
    fps = 1.0 / float(zooms[3]) if len(zooms) > 3 and 0 < zooms[3] < 1 else float("nan")
    return np.transpose(array, (2, 1, 0)), fps


def decode_image_sequence(path: str | Path) -> tuple[np.ndarray, VideoInfo]:
    """Decode a NIfTI/MHD sequence; an unreadable or truncated file yields an info with the error."""
    try:
        array, fps = load_sequence_array(path)
        frames = np.ascontiguousarray(to_uint8(array))
    except Exception as error:  # nibabel raises several types for truncated gzip / bad headers
        message = " ".join(str(error).split())[:200] or type(error).__name__
        return np.zeros((0, 0, 0), np.uint8), VideoInfo(0, 0, 0, float("nan"), f"cannot be read ({message})")
    if frames.shape[0] == 0:
        return frames, VideoInfo(0, 0, 0, fps, "contains no frames")
    return frames, VideoInfo(frames.shape[0], frames.shape[1], frames.shape[2], fps)


def read_label_map(path: str | Path) -> np.ndarray:
    """A segmentation file (NIfTI or MHD) as uint8 labels ``(T, H, W)`` (T = 1 for an image), upright.

    Unlike :func:`decode_image_sequence` values are never rescaled. Raises ``ValueError`` naming the file."""
    try:
        array, _ = load_sequence_array(path)
    except Exception as error:
        raise ValueError(f"{path}: cannot be read ({' '.join(str(error).split())[:200]})") from error
    labels = np.asarray(array)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{path}: label values must lie in 0-255, found {labels.min()}..{labels.max()}")
    return np.ascontiguousarray(labels.astype(np.uint8))


# ---------------------------------------------------------------------------------------------------- registration

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mhd")


def _decode_volume(path: Path, backend: str) -> tuple[np.ndarray, VideoInfo]:
    return decode_image_sequence(path)  # the video backend does not apply to image sequences


register_reader(VOLUME_SUFFIXES, _decode_volume)
