"""Decoding a video with PyAV: every frame feeds the cut detector, a few are kept as images.

Each decoded frame is shrunk to a 64-pixel-wide RGB thumbnail (cheap, in FFmpeg's scaler) whose
mean absolute difference to the previous one drives the shot splitter (``shots.py``). Frames are
kept at ``sample_fps``: the first frame at or after each sampling time. A file that cannot be
opened, has no video stream or no decodable frame raises ``BadInput``, and so does a video whose
short side is below ``min_side`` (``too_small``, found at its first frame); a file that breaks off
half-way keeps the frames decoded before the break (counted: ``truncated_video_partly_used``).
Rotation metadata (the stream's display matrix: phone videos shot upright) is applied to the
kept frames, so they are stored the way a player shows them (counted: ``video_rotated``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .item import decode_image, encode_image
from .media import BadInput
from .shots import frame_quality
from .stats import Stats

__all__ = ["DecodedVideo", "decode_video", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv")
THUMB_WIDTH = 64


@dataclass
class DecodedVideo:
    """Sampled frames with their times and quality, plus the cut signal of every frame.

    Sampled frames are kept JPEG-compressed in memory (quality 95, no chroma subsampling): a
    5-minute video sampled at 2 fps holds ~600 frames, ~1 GB as raw 1024-px RGB but ~100 MB so.
    ``frame(i)`` decodes one.
    """

    times: list[float] = field(default_factory=list)  # seconds, of the sampled frames
    quality: list[tuple[float, float]] = field(default_factory=list)  # (brightness, sharpness)
    encoded: list[bytes] = field(default_factory=list)
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every decoded frame
    diffs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # |Δthumb| to the previous one
    size: tuple[int, int] = (0, 0)  # (width, height) as displayed (rotation applied)
    rotation: int = 0  # degrees counter-clockwise applied to the decoded frames
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.times)

    def frame(self, index: int) -> Image.Image:
        """Sampled frame ``index`` as RGB (at most ``max_side`` on its long side)."""
        return decode_image(self.encoded[index])

    def add(self, time: float, image: Image.Image) -> None:
        self.times.append(time)
        self.quality.append(frame_quality(image))
        self.encoded.append(encode_image(image, "jpg", 95))


def _block_mean(plane: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Average ``plane`` (H, W) over a ``rows`` × ``cols`` grid of equal blocks (from at most
    ~4×4 samples per block: large frames are strided first)."""
    step = max(1, min(plane.shape[0] // rows, plane.shape[1] // cols) // 4)
    plane = plane[::step, ::step]
    bh, bw = max(1, plane.shape[0] // rows), max(1, plane.shape[1] // cols)
    cropped = plane[: rows * bh, : cols * bw].astype(np.float32)
    return cropped.reshape(rows, bh, cols, bw).mean(axis=(1, 3))  # (rows, cols)


def thumbnail(frame: Any) -> np.ndarray:
    """~64-pixel-wide RGB thumbnail of a PyAV frame, values in [0, 1] → (h, w, 3).

    YUV 4:2:0 frames (nearly all video) are averaged straight from their planes — ~50× faster
    than FFmpeg's scaler for this size — and converted with the BT.601 matrix; other formats go
    through ``reformat``.
    """
    cols = min(THUMB_WIDTH, frame.width)
    rows = max(1, round(frame.height * cols / max(frame.width, 1)))
    chroma_fits = frame.width >= 2 * cols and frame.height >= 2 * rows  # ≥ 1 sample per block
    if frame.format.name in ("yuv420p", "yuvj420p") and chroma_fits:
        planes = []
        for k, plane in enumerate(frame.planes):
            h = frame.height if k == 0 else (frame.height + 1) // 2
            w = frame.width if k == 0 else (frame.width + 1) // 2
            data = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
            planes.append(_block_mean(data, rows, cols))
        y, u, v = planes[0], planes[1] - 128.0, planes[2] - 128.0
        rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], -1)
        return np.clip(rgb, 0, 255) / 255.0  # (rows, cols, 3)
    small = frame.reformat(width=cols, height=rows, format="rgb24").to_ndarray()
    return small.astype(np.float32) / 255.0


def _to_image(frame: Any, max_side: int, rotation: int) -> Image.Image:
    """RGB PIL image of a frame, at most ``max_side`` (scaled by FFmpeg: faster than Pillow),
    turned ``rotation`` degrees counter-clockwise (multiples of 90)."""
    scale = min(1.0, max_side / max(frame.width, frame.height))
    if scale == 1.0:
        image = frame.to_image()
    else:
        size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        image = frame.reformat(
            width=size[0], height=size[1], format="rgb24", interpolation="AREA"
        ).to_image()
    turn = {
        90: Image.Transpose.ROTATE_90,
        180: Image.Transpose.ROTATE_180,
        270: Image.Transpose.ROTATE_270,
    }.get(rotation)
    return image if turn is None else image.transpose(turn)


def _rotation(frame: Any) -> int:
    """The display rotation of a frame, snapped to 0/90/180/270 (counter-clockwise)."""
    try:
        angle = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    return int(round(angle / 90.0)) % 4 * 90


def require_av():
    """PyAV, the data pipeline's one video dependency (the ``data`` extra), imported on use."""
    try:
        import av
    except ModuleNotFoundError:
        from ..errors import MSDiffusionError

        raise MSDiffusionError(
            "video input needs PyAV: pip install 'msdiffusion[data]' (or pip install av==18.1.0)"
        ) from None
    return av


def decode_video(
    path: str | Path,
    *,
    sample_fps: float,
    max_frames: int,
    max_side: int,
    stats: Stats,
    min_side: int = 1,
) -> DecodedVideo:
    """Decode ``path``; keep one frame per ``1 / sample_fps`` seconds (``max_frames`` at most)."""
    av = require_av()

    path = Path(path)
    if os.path.getsize(path) == 0:
        raise BadInput("empty")
    try:
        container = av.open(str(path))
    except Exception as err:  # FFmpeg says "invalid data", "no such codec", ...: all unreadable
        raise BadInput("unreadable", f"{type(err).__name__}: {err}") from None
    out = DecodedVideo()
    times: list[float] = []
    diffs: list[float] = []
    try:
        if not container.streams.video:
            raise BadInput("no_video_stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        previous: np.ndarray | None = None
        next_sample = None
        index = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else index / rate
                if index == 0:
                    out.rotation = _rotation(frame)
                    if min(frame.width, frame.height) < min_side:
                        raise BadInput("too_small", f"{frame.width}x{frame.height}")
                index += 1
                small = thumbnail(frame)
                diffs.append(0.0 if previous is None else float(np.abs(small - previous).mean()))
                previous = small
                times.append(t)
                if next_sample is None:
                    next_sample = t
                if t + 1e-6 >= next_sample and len(out) < max_frames:
                    image = _to_image(frame, max_side, out.rotation)
                    out.size = (
                        (frame.height, frame.width)
                        if out.rotation in (90, 270)
                        else (frame.width, frame.height)
                    )
                    out.add(t, image)
                    next_sample += 1.0 / sample_fps
                    while next_sample <= t:  # a gap in the timestamps: resume after it
                        next_sample += 1.0 / sample_fps
                if len(out) >= max_frames:
                    break
        except BadInput:
            raise
        except Exception as err:  # corrupt or cut-off data after some good frames
            if not times:
                raise BadInput("unreadable", f"{type(err).__name__}: {err}") from None
            out.truncated = True
    finally:
        container.close()
    if not len(out):
        raise BadInput("no_frames")
    out.frame_times = np.asarray(times, dtype=np.float64)
    out.diffs = np.asarray(diffs, dtype=np.float64)
    stats.add("frames_decoded", len(times))
    stats.add("frames_sampled", len(out))
    if out.truncated:
        stats.convert("truncated_video_partly_used")
    if out.rotation:
        stats.convert("video_rotated")
    return out
