"""Video containers (AVI, MP4, MOV, MKV...) decoded to grey frames, and clip sampling shared by every video dataset.

Three decoders give the same frames: decord (the default where its wheels install), PyAV and OpenCV (both maintained
and available on every platform; OpenCV is always installed). ``video_backend: auto`` takes the first one that imports,
in that order, so an install without decord (macOS arm64 has no decord wheels) still reads every video. Frames are the
red channel of the decoded RGB (the videos are grey, stored as 3 equal channels), whichever backend decodes them.

Importing this module registers the container reader with :mod:`datamodules.cache` (for the suffixes in
``VIDEO_SUFFIXES`` and, as the default, any suffix no other reader claims).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from datamodules.cache import (  # noqa: F401  (re-exported: the video IO names readers import from here)
    DecodedVideoCache,
    VideoInfo,
    decode_video,
    default_cache_dir,
    failed,
    read_frames,
    register_reader,
)
from datamodules.errors import ConfigError, DataError

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
BACKENDS = ("decord", "pyav", "opencv")
_MODULES = {"decord": "decord", "pyav": "av", "opencv": "cv2"}


def backend_available(name: str) -> bool:
    """Whether the backend's package imports here."""
    try:
        importlib.import_module(_MODULES[name])
    except ImportError:
        return False
    return True


def resolve_backend(name: str = "auto") -> str:
    """``auto`` -> the first installed of decord, PyAV, OpenCV; a named backend must be installed (ConfigError)."""
    if name == "auto":
        for candidate in BACKENDS:
            if backend_available(candidate):
                return candidate
        raise ConfigError("no video decoder is installed: pip install decord, av or opencv-python-headless")
    if name not in BACKENDS:
        raise ConfigError(f"video_backend must be auto, {', '.join(BACKENDS)}; got {name!r}")
    if not backend_available(name):
        raise ConfigError(f"video_backend {name!r} is not installed (pip install {_MODULES[name]}); or use auto")
    return name


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:200] if text else type(error).__name__


def _truncated(frames: list[np.ndarray], declared: int, fps: float) -> tuple[np.ndarray, VideoInfo]:
    stacked = np.stack(frames) if frames else np.zeros((0, 0, 0), np.uint8)
    height, width = stacked.shape[1:] if frames else (0, 0)
    reason = f"truncated or corrupt: decoded {len(frames)} of {declared} frames"
    return stacked, VideoInfo(len(frames), height, width, fps, reason)


# ---------------------------------------------------------------------------------------------------- decord


def _decord_reader(path: Path):
    import decord  # imported lazily: decord loads ffmpeg libraries

    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _decode_decord(path: Path) -> tuple[np.ndarray, VideoInfo]:
    try:
        reader = _decord_reader(path)
        declared = len(reader)
        fps = float(reader.get_avg_fps())
    except Exception as error:  # decord raises RuntimeError / DECORDError with multi-line text
        return failed(f"cannot be opened ({_first_line(error)})")
    if declared == 0:
        return failed("contains no frames", fps)
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
    return _truncated(decoded, declared, fps)


def _read_decord(path: Path, first: int, last: int) -> np.ndarray:
    # one contiguous run decodes ~10x faster than strided seeks (each seek restarts the decoder)
    return _decord_reader(path).get_batch(list(range(first, last + 1))).asnumpy()[..., 0]


# ---------------------------------------------------------------------------------------------------- PyAV


def _iterate_pyav(path: Path, stop: int | None = None):
    """(declared frame count, fps, iterator of red-channel frames) of a container's first video stream."""
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    declared, fps = int(stream.frames or 0), float(rate) if rate else 0.0

    def frames():
        try:
            for number, frame in enumerate(container.decode(stream)):
                if stop is not None and number > stop:
                    break
                yield frame.to_ndarray(format="rgb24")[..., 0]
        finally:
            container.close()

    return declared, fps, frames()


def _decode_pyav(path: Path) -> tuple[np.ndarray, VideoInfo]:
    try:
        declared, fps, iterator = _iterate_pyav(path)
    except Exception as error:  # av.error.* (InvalidDataError, ...), IndexError: no video stream
        return failed(f"cannot be opened ({_first_line(error)})")
    decoded: list[np.ndarray] = []
    broken = False
    try:
        for frame in iterator:
            decoded.append(frame)
    except Exception:
        broken = True
    if not decoded:
        return failed("contains no frames" if not broken else "cannot be decoded", fps)
    if broken or len(decoded) < declared:
        return _truncated(decoded, max(declared, len(decoded)), fps)
    frames = np.stack(decoded)
    return frames, VideoInfo(len(frames), frames.shape[1], frames.shape[2], fps)


def _read_pyav(path: Path, first: int, last: int) -> np.ndarray:
    _, _, iterator = _iterate_pyav(path, stop=last)
    frames = [frame for number, frame in enumerate(iterator) if number >= first]
    if len(frames) != last - first + 1:
        raise ValueError(f"decoded {first + len(frames)} frames, frame {last} is past the end")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------- OpenCV


def _decode_opencv(path: Path) -> tuple[np.ndarray, VideoInfo]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return failed("cannot be opened (OpenCV)")
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        decoded: list[np.ndarray] = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            decoded.append(frame[..., 2] if frame.ndim == 3 else frame)  # BGR: the red channel, as decord's RGB[0]
    finally:
        capture.release()
    if not decoded:
        return failed("contains no frames", fps)
    if len(decoded) < declared:
        return _truncated(decoded, declared, fps)
    frames = np.ascontiguousarray(np.stack(decoded))
    return frames, VideoInfo(len(frames), frames.shape[1], frames.shape[2], fps)


def _read_opencv(path: Path, first: int, last: int) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        for _ in range(first):  # grab() decodes without converting: exact for inter-coded formats, unlike a seek
            if not capture.grab():
                raise ValueError(f"frame {first} is past the end")
        frames = []
        for _ in range(last - first + 1):
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"frame {first + len(frames)} cannot be decoded")
            frames.append(frame[..., 2] if frame.ndim == 3 else frame)
    finally:
        capture.release()
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------- dispatch

_DECODERS = {"decord": _decode_decord, "pyav": _decode_pyav, "opencv": _decode_opencv}
_RANGE_READERS = {"decord": _read_decord, "pyav": _read_pyav, "opencv": _read_opencv}


def decode_container(path: str | Path, backend: str = "auto") -> tuple[np.ndarray, VideoInfo]:
    """Decode a whole video container to grey uint8 ``(T, H, W)`` with ``backend``; on failure the info carries the
    error and the frames decoded so far."""
    return _DECODERS[resolve_backend(backend)](Path(path))


def read_container_frames(path: str | Path, indices: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Only the frames ``indices`` of a container (decoded as one contiguous run from the first to the last)."""
    indices = np.asarray(indices, dtype=int)
    try:
        first, last = int(indices.min()), int(indices.max())
        frames = _RANGE_READERS[resolve_backend(backend)](Path(path), first, last)
        return np.asarray(frames)[indices - first]
    except ConfigError:
        raise
    except Exception as error:
        raise DataError(f"{path}: cannot decode frames {list(indices)[:3]}...: {_first_line(error)}") from error


register_reader(VIDEO_SUFFIXES, decode_container, read_container_frames, default=True)


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
