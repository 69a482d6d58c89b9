"""Video IO and clip sampling shared by every video dataset.

Decoding goes through decord. Each video is decoded once (in ``prepare_data``) into a uint8 grey ``.npy`` file in a
cache folder; items then read only the frames of their clip from a memory map, which is what makes loading fast.
The same pass validates every video, so a truncated or undecodable file is found before training starts and never
crashes an epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from datamodules.errors import DataError


@dataclass(frozen=True)
class VideoInfo:
    """What decoding a file found: its real frame count wins over any CSV's."""

    num_frames: int
    height: int
    width: int
    fps: float
    error: str | None = None  # why the file is unusable, None when it decoded completely


def _open_reader(path: Path):
    import decord  # imported lazily: decord loads ffmpeg libraries

    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


NIFTI_SUFFIXES = (".nii", ".nii.gz", ".mhd")


def is_volume_file(path: str | Path) -> bool:
    """NIfTI / MetaImage sequences (CAMUS, CardiacNet) rather than video containers."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def decode_video(path: str | Path) -> tuple[np.ndarray, VideoInfo]:
    """Decode a whole video to grey uint8 ``(T, H, W)``; on failure the info carries the error and frames decoded so far.

    AVI/MP4 go through decord; NIfTI/MHD image sequences through :func:`datamodules.nifti.decode_image_sequence`.
    """
    path = Path(path)
    if is_volume_file(path):
        from datamodules.nifti import decode_image_sequence

        return decode_image_sequence(path)
    try:
        reader = _open_reader(path)
        declared = len(reader)
        fps = float(reader.get_avg_fps())
    except Exception as error:  # decord raises RuntimeError / DECORDError with multi-line text
        return np.zeros((0, 0, 0), np.uint8), VideoInfo(0, 0, 0, 0.0, f"cannot be opened ({_first_line(error)})")
    if declared == 0:
        return np.zeros((0, 0, 0), np.uint8), VideoInfo(0, 0, 0, fps, "contains no frames")
    try:
        frames = reader.get_batch(list(range(declared))).asnumpy()[..., 0]
        return np.ascontiguousarray(frames), VideoInfo(declared, frames.shape[1], frames.shape[2], fps)
    except Exception:
        pass  # decode frame by frame to find how far the file is readable
    decoded: list[np.ndarray] = []
    for index in range(declared):
        try:
            decoded.append(reader[index].asnumpy()[..., 0])
        except Exception:
            break
    frames = np.stack(decoded) if decoded else np.zeros((0, 0, 0), np.uint8)
    height, width = (frames.shape[1], frames.shape[2]) if decoded else (0, 0)
    reason = f"truncated or corrupt: decoded {len(decoded)} of {declared} frames"
    return frames, VideoInfo(len(decoded), height, width, fps, reason)


def read_frames(path: str | Path, indices: np.ndarray) -> np.ndarray:
    """Decode only the given frame indices (grey uint8 ``(len(indices), H, W)``); used when the decoded cache is off."""
    if is_volume_file(path):
        return decode_video(path)[0][np.asarray(indices, dtype=int)]
    indices = np.asarray(indices, dtype=int)
    try:
        reader = _open_reader(Path(path))
        # one contiguous run decodes ~10x faster than strided seeks (each seek restarts the decoder)
        first, last = int(indices.min()), int(indices.max())
        frames = reader.get_batch(list(range(first, last + 1))).asnumpy()[..., 0]
        return frames[indices - first]
    except Exception as error:
        raise DataError(f"{path}: cannot decode frames {list(indices)[:3]}...: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:200] if text else type(error).__name__


class DecodedVideoCache:
    """A folder of decoded grey uint8 videos (``.npy``) plus a JSON manifest of each file's :class:`VideoInfo`.

    Entries are keyed by the video path, size and modification time, so replacing a file invalidates its entry.
    ``store_frames=False`` keeps only the manifest (validation without the disk cost of decoded frames).
    """

    def __init__(self, root: str | Path, store_frames: bool = True) -> None:
        self.root = Path(root)
        self.store_frames = store_frames
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _key(path: Path) -> str:
        stat = path.stat()
        text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def _info_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _frames_path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def info(self, path: str | Path) -> VideoInfo:
        """Return the file's info, decoding (and caching) it the first time it is seen."""
        path = Path(path)
        if not path.is_file():
            return VideoInfo(0, 0, 0, 0.0, "file not found")
        key = self._key(path)
        info_path = self._info_path(key)
        if self._entry_complete(key) and (not self.store_frames or self._frames_path(key).is_file()):
            return VideoInfo(**json.loads(info_path.read_text()))
        frames, info = self._prepare(path, key, *decode_video(path))
        if self.store_frames and info.error is None:
            _atomic_save_npy(self._frames_path(key), frames)
        _atomic_write_text(info_path, json.dumps(asdict(info)))
        return info

    def _entry_complete(self, key: str) -> bool:
        """Whether the manifest entries of ``key`` exist (subclasses add their own side files)."""
        return self._info_path(key).is_file()

    def _prepare(self, path: Path, key: str, frames: np.ndarray, info: VideoInfo) -> tuple[np.ndarray, VideoInfo]:
        """Turn freshly decoded frames into what the cache stores (here: unchanged); also called for a file that
        failed to decode (``info.error`` set), so subclasses can record the failure in their side files."""
        return frames, info

    def frames(self, path: str | Path) -> np.ndarray:
        """Memory-mapped grey frames ``(T, H, W)`` of a video already validated by :meth:`info`."""
        path = Path(path)
        frames_path = self._frames_path(self._key(path))
        if not frames_path.is_file():
            self.info(path)
        return np.load(frames_path, mmap_mode="r")


def _atomic_save_npy(target: Path, array: np.ndarray) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, target)


def _atomic_write_text(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def default_cache_dir(data_dir: str | Path) -> Path:
    """``<data_dir>/.echolab_cache`` when writable, else a per-dataset folder under ``~/.cache/echolab``."""
    data_dir = Path(data_dir).resolve()
    local = data_dir / ".echolab_cache"
    if os.access(data_dir, os.W_OK) or local.is_dir():
        return local
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "echolab" / f"{data_dir.name}-{digest}"


# ---------------------------------------------------------------- clip sampling (EchoNet-Dynamic convention)


def clip_span(clip_length: int, period: int) -> int:
    """Number of source frames a clip of ``clip_length`` frames taken every ``period`` frames covers."""
    return (clip_length - 1) * period + 1


def random_clip_start(num_frames: int, clip_length: int, period: int, rng: np.random.Generator) -> int:
    """A uniformly random start such that the clip fits when it can (start 0 and padding otherwise)."""
    last_start = max(0, num_frames - clip_span(clip_length, period))
    return int(rng.integers(0, last_start + 1))


def evaluation_clip_starts(num_frames: int, clip_length: int, period: int, num_clips: int | None) -> np.ndarray:
    """Deterministic clip starts for evaluation: every start when ``num_clips`` is None, else evenly spaced ones."""
    last_start = max(0, num_frames - clip_span(clip_length, period))
    if num_clips is None:
        return np.arange(last_start + 1)
    return np.unique(np.linspace(0, last_start, num_clips).round().astype(int))


def clip_frame_indices(start: int, clip_length: int, period: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of a clip and a bool mask of which are real; indices past the end are clamped (then padded)."""
    indices = start + period * np.arange(clip_length)
    real = indices < num_frames
    return np.minimum(indices, max(num_frames - 1, 0)), real
