"""Videos that a browser plays (W&B's media panel is a browser): H.264 in MP4, yuv420p, even frame sizes.

OpenCV's ``mp4v`` fourcc writes MPEG-4 part 2, which Chrome and Firefox do not decode, so a W&B video written that
way shows as a broken player. PyAV (``pip install av``, in the ``[dev]`` and ``[pyav]`` extras) bundles libx264.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_browser_video(path: str | Path, frames: np.ndarray, fps: float = 8.0, crf: int = 20) -> Path:
    """Write ``frames`` ``(T, H, W, 3)`` uint8 RGB (or ``(T, H, W)`` grey) as H.264 MP4; odd sizes are padded by one
    pixel (yuv420p needs even ones). Returns the path."""
    try:
        import av
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("writing browser-playable (H.264) videos needs PyAV: pip install av") from error
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.dtype != np.uint8:
        raise ValueError(f"write_browser_video: frames must be uint8, got {frames.dtype}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "movflags": "+faststart"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_codec(path: str | Path) -> tuple[str, str, int]:
    """(codec name, pixel format, number of frames) of a video file's first video stream, read back with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, stream.codec_context.pix_fmt, frames
