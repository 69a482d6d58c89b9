"""The decoded-video cache and the file readers it decodes with.

Each video is decoded once (in ``prepare_data``) into a uint8 grey ``.npy`` file in a cache folder, next to a JSON
manifest of what decoding found (:class:`VideoInfo`); items then read only the frames of their clip from a memory map,
which is what makes loading fast. The same pass validates every file, so a truncated or undecodable one is found
before training starts and never crashes an epoch.

Readers are registered by file suffix (:func:`register_reader`): :mod:`datamodules.video` registers the video
containers (decord, PyAV or OpenCV), :mod:`datamodules.nifti` the NIfTI / MetaImage sequences. This module imports
neither, so the layering is cache <- video, nifti <- datasets, without cycles; importing :mod:`datamodules` registers
both. Writers here are atomic (a temporary file renamed into place), so every DDP rank may write the same entry.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from datamodules.errors import DataError
from datamodules.transforms import Box, ResizeMode, content_box, crop_and_resize


@dataclass(frozen=True)
class VideoInfo:
    """What decoding a file found: its real frame count wins over any CSV's.

    ``source_height`` / ``source_width`` are the size of the frames before a resizing cache made them square (0 when
    the cache stores them as decoded), so the aspect ratio a resize changes stays known.
    """

    num_frames: int
    height: int
    width: int
    fps: float
    error: str | None = None  # why the file is unusable, None when it decoded completely
    source_height: int = 0
    source_width: int = 0

    @property
    def source_shape(self) -> tuple[int, int]:
        return (self.source_height or self.height, self.source_width or self.width)


def failed(reason: str, fps: float = 0.0) -> tuple[np.ndarray, VideoInfo]:
    """The (no frames, info with ``reason``) pair a reader returns for a file it cannot use."""
    return np.zeros((0, 0, 0), np.uint8), VideoInfo(0, 0, 0, fps, reason)


# ---------------------------------------------------------------------------------------------------- readers

Decoder = Callable[[Path, str], tuple[np.ndarray, VideoInfo]]  # (path, backend) -> grey uint8 (T, H, W), info
FrameReader = Callable[[Path, np.ndarray, str], np.ndarray]  # (path, frame indices, backend) -> (len, H, W)


@dataclass(frozen=True)
class Reader:
    decode: Decoder
    read_frames: FrameReader | None = None  # None: decode the whole file and index it


_READERS: dict[str, Reader] = {}
_DEFAULT_READER: list[Reader] = []


def register_reader(
    suffixes: Iterable[str], decode: Decoder, read_frames: FrameReader | None = None, default: bool = False
) -> None:
    """Decode files ending with any of ``suffixes`` (case-insensitive, e.g. ``.nii.gz``) with ``decode``;
    ``default`` also uses it for suffixes nobody registered (the video containers: ffmpeg reads most formats)."""
    reader = Reader(decode, read_frames)
    for suffix in suffixes:
        _READERS[suffix.lower()] = reader
    if default:
        _DEFAULT_READER[:] = [reader]


def registered_suffixes() -> tuple[str, ...]:
    return tuple(sorted(_READERS))


def reader_for(path: str | Path) -> Reader | None:
    """The reader of the longest registered suffix the file name ends with (``.nii.gz`` before ``.gz``)."""
    name = Path(path).name.lower()
    matches = [suffix for suffix in _READERS if name.endswith(suffix)]
    if matches:
        return _READERS[max(matches, key=len)]
    return _DEFAULT_READER[0] if _DEFAULT_READER else None


def decode_video(path: str | Path, backend: str = "auto") -> tuple[np.ndarray, VideoInfo]:
    """Decode a whole file to grey uint8 ``(T, H, W)`` with the reader registered for its suffix; on failure the info
    carries the error (and the frames decoded so far). ``backend`` picks the video decoder (:mod:`datamodules.video`)."""
    path = Path(path)
    reader = reader_for(path)
    if reader is None:
        return failed(f"has no reader for its suffix (known: {', '.join(registered_suffixes())})")
    return reader.decode(path, backend)


def read_frames(path: str | Path, indices: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Decode only the given frame indices (grey uint8 ``(len(indices), H, W)``); used when the decoded cache is off.
    Raises :class:`datamodules.errors.DataError` naming the file."""
    path, indices = Path(path), np.asarray(indices, dtype=int)
    reader = reader_for(path)
    if reader is not None and reader.read_frames is not None:
        return reader.read_frames(path, indices, backend)
    frames, info = decode_video(path, backend)
    if info.error is not None and (len(frames) == 0 or indices.max() >= len(frames)):
        raise DataError(f"{path}: {info.error}")
    return frames[indices]


# ---------------------------------------------------------------------------------------------------- atomic writers


def _tmp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def atomic_save_npy(target: str | Path, array: np.ndarray) -> None:
    """``np.save`` into a temporary file renamed onto ``target``: readers never see a half-written array."""
    target = Path(target)
    tmp = _tmp_path(target)
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, target)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` into a temporary file renamed onto ``target``."""
    target = Path(target)
    tmp = _tmp_path(target)
    tmp.write_text(text)
    os.replace(tmp, target)


def file_key(path: str | Path) -> str:
    """A cache key of a file: its resolved path (a symlink's target), size and modification time, so replacing the
    file invalidates every entry derived from it."""
    path = Path(path)
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def default_cache_dir(data_dir: str | Path) -> Path:
    """``<data_dir>/.echolab_cache`` when writable, else a per-dataset folder under ``~/.cache/echolab``."""
    data_dir = Path(data_dir).resolve()
    local = data_dir / ".echolab_cache"
    if os.access(data_dir, os.W_OK) or local.is_dir():
        return local
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "echolab" / f"{data_dir.name}-{digest}"


# ---------------------------------------------------------------------------------------------------- caches


class DecodedVideoCache:
    """A folder of decoded grey uint8 videos (``.npy``) plus a JSON manifest of each file's :class:`VideoInfo`.

    Entries are keyed by :func:`file_key`, so replacing a file invalidates its entry. ``store_frames=False`` keeps
    only the manifest (validation without the disk cost of decoded frames). ``backend`` is the video decoder
    (``auto``, ``decord``, ``pyav``, ``opencv``); it does not enter the key (every backend decodes the same frames).
    Instances are small and picklable, so a process pool can fill one (:meth:`info` is safe to call concurrently).
    """

    def __init__(self, root: str | Path, store_frames: bool = True, backend: str = "auto") -> None:
        self.root = Path(root)
        self.store_frames = store_frames
        self.backend = backend
        self.root.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path) -> str:
        return file_key(path)

    def _info_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _frames_path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def is_cached(self, path: str | Path) -> bool:
        """Whether :meth:`info` would answer from the cache without decoding (a missing file counts as cached)."""
        path = Path(path)
        return not path.is_file() or self._cached_info(self._key(path)) is not None

    def _cached_info(self, key: str) -> VideoInfo | None:
        """The manifest's info when the entry is complete (a file that failed to decode has no frames to store)."""
        if not self._entry_complete(key):
            return None
        info = VideoInfo(**json.loads(self._info_path(key).read_text()))
        if self.store_frames and info.error is None and not self._frames_path(key).is_file():
            return None
        return info

    def info(self, path: str | Path) -> VideoInfo:
        """Return the file's info, decoding (and caching) it the first time it is seen."""
        path = Path(path)
        if not path.is_file():
            return VideoInfo(0, 0, 0, 0.0, "file not found")
        key = self._key(path)
        cached = self._cached_info(key)
        if cached is not None:
            return cached
        frames, info = self._prepare(path, key, *decode_video(path, self.backend))
        if self.store_frames and info.error is None:
            atomic_save_npy(self._frames_path(key), frames)
        atomic_write_text(self._info_path(key), json.dumps(asdict(info)))
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


class ResizedVideoCache(DecodedVideoCache):
    """A decoded-video cache whose entries are made ``size x size`` (after cropping to the non-zero box of the first
    frame when ``crop``; a non-square frame is stretched, zero-padded or centre-cropped as ``resize`` says), so items
    never decode or resize full-size frames.

    Files whose name ends with one of ``label_suffixes`` are label maps and are resized by nearest neighbour. The crop
    box, in the original frame, is kept beside each entry, so masks drawn on the original frames can be cut the same
    way (:meth:`crop_box`). Entries are keyed by file, crop setting, resize mode and size.
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        crop: bool = False,
        label_suffixes: tuple[str, ...] = (),
        store_frames: bool = True,
        resize: ResizeMode = "stretch",
        backend: str = "auto",
    ) -> None:
        super().__init__(root, store_frames=store_frames, backend=backend)
        self.size = size
        self.crop = crop
        self.label_suffixes = tuple(label_suffixes)
        self.resize = resize

    def _key(self, path: Path) -> str:
        mode = "" if self.resize == "stretch" else f"-{self.resize}"  # stretch keeps the keys of existing caches
        return f"{file_key(path)}-{'crop' if self.crop else 'full'}{self.size}{mode}"

    def _box_path(self, key: str) -> Path:
        return self.root / f"{key}.box.json"

    def _entry_complete(self, key: str) -> bool:
        return super()._entry_complete(key) and self._box_path(key).is_file()

    def _prepare(self, path: Path, key: str, frames: np.ndarray, info: VideoInfo) -> tuple[np.ndarray, VideoInfo]:
        """Crop to the content box (when ``crop``), make square, resize, and keep the box beside the entry (an empty
        box for a file that failed to decode, so the failure stays cached)."""
        box: Box = (0, 0, 0, 0)
        if info.error is None:
            box = content_box(frames[0]) if self.crop else (0, frames.shape[1], 0, frames.shape[2])
            label = path.name.endswith(self.label_suffixes)
            interpolation = cv2.INTER_NEAREST if label else cv2.INTER_AREA
            frames = crop_and_resize(frames, box, self.size, interpolation, self.resize)
            info = VideoInfo(len(frames), self.size, self.size, info.fps, None, box[1] - box[0], box[3] - box[2])
        atomic_write_text(self._box_path(key), json.dumps(list(box)))
        return frames, info

    def crop_box(self, path: str | Path) -> Box:
        """The box the sequence was cut to before resizing, in its original frame."""
        key = self._key(Path(path))
        if not self._box_path(key).is_file():
            self.info(path)
        return tuple(json.loads(self._box_path(key).read_text()))  # type: ignore[return-value]

    def cut(self, masks: np.ndarray, path: str | Path, interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
        """``(K, H, W)`` maps drawn on the original frames of ``path``, cut and resized exactly like its frames."""
        return crop_and_resize(masks, self.crop_box(path), self.size, interpolation, self.resize)


# ---------------------------------------------------------------------------------------------------- first-run fill


@dataclass(frozen=True)
class FillReport:
    """What :func:`fill_cache` did: files decoded now, found already cached, unusable (among those decoded)."""

    decoded: int
    cached: int
    unusable: int
    seconds: float
    workers: int


def _info_error(cache: DecodedVideoCache, path: Path) -> str | None:
    return cache.info(path).error


def _pool_context():
    """fork on Linux (what DataLoader workers use: no re-import of the program, ready in milliseconds; the children
    only decode and write files, and must not reconfigure OpenCV's thread pool, which deadlocks after a fork);
    spawn elsewhere (macOS, where fork is unsafe)."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def fill_cache(
    cache: DecodedVideoCache,
    paths: Sequence[str | Path],
    workers: int = 0,
    progress: bool = True,
    description: str = "decoding videos",
    parallel_from: int = 0,
) -> FillReport:
    """Decode every not-yet-cached file of ``paths`` into ``cache``, in a pool of ``workers`` processes (0 or 1:
    in this process), with a progress bar on stderr. Entries are written atomically by whichever process decodes
    them, so a killed first run resumes where it stopped. With fewer than ``parallel_from`` files to decode the
    pool is not worth its start-up (a second or two) and they are decoded here."""
    started = time.perf_counter()
    unique = list(dict.fromkeys(Path(p) for p in paths))
    todo = [path for path in unique if not cache.is_cached(path)]
    workers = max(0, min(int(workers), len(todo))) if len(todo) >= parallel_from else 0
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=description, unit="video", file=sys.stderr, mininterval=1.0, leave=False)
    unusable = 0
    try:
        if workers <= 1:
            results = (_info_error(cache, path) for path in todo)
            for error in results:
                unusable += error is not None
                if bar is not None:
                    bar.update()
        else:
            chunk = max(1, min(16, len(todo) // (workers * 8)))
            with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
                for error in pool.map(partial(_info_error, cache), todo, chunksize=chunk):
                    unusable += error is not None
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()
    return FillReport(len(todo), len(unique) - len(todo), unusable, time.perf_counter() - started, max(workers, 1))
