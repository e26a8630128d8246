"""Synthetic videos of moving coloured shapes, with hard cuts — for tests, demos and benchmarks.

Each shot has a textured background (fixed per shot) and shapes that move and grow across it;
moving shapes also change inside (a sliding stripe), a static shape does not (every frame of it is
a near-duplicate). Written with PyAV (``mpeg4`` by default: in every FFmpeg build), optionally
with rotation metadata (as phones write it). ``ColourDetector`` finds the shapes by colour: a
detector with exact boxes for tests, demos and pipeline benchmarks (``colour_detector`` is its
``module:attribute`` plug-in form).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "COLOURS",
    "Shape",
    "Shot",
    "render",
    "make_video",
    "standard_shots",
    "STANDARD_CAPTION",
    "write_demo_videos",
    "demo_settings",
    "ColourDetector",
    "colour_detector",
]

COLOURS = {
    "red": (230, 30, 30),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 20),
    "green": (30, 200, 60),
    "magenta": (230, 20, 230),
}


@dataclass(frozen=True)
class Shape:
    """A filled square or circle of ``colour`` moving from ``start`` to ``end`` (box centres, px)
    and growing from ``size0`` to ``size1`` over its shot."""

    colour: str
    kind: str  # square | circle
    start: tuple[float, float]
    end: tuple[float, float]
    size0: float
    size1: float

    def box(self, u: float) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` at shot progress ``u`` in [0, 1]."""
        cx = self.start[0] + (self.end[0] - self.start[0]) * u
        cy = self.start[1] + (self.end[1] - self.start[1]) * u
        half = (self.size0 + (self.size1 - self.size0) * u) / 2
        return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


@dataclass(frozen=True)
class Shot:
    seconds: float
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...] = ()
    brightness: float = 1.0  # < 0.06: a "dark" shot the quality filter drops


def render(shot: Shot, u: float, size: tuple[int, int], seed: int) -> np.ndarray:
    """One frame (H, W, 3) uint8 of ``shot`` at progress ``u``."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.array(shot.background, dtype=np.float32)
    texture = rng.normal(0, 18, size=(h // 8 + 1, w // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)
    frame = np.clip(base + texture[:h, :w], 0, 255)  # (H, W, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    for s in shot.shapes:
        x0, y0, x1, y1 = s.box(u)
        if s.kind == "square":
            inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        else:
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
            inside = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
        frame[inside] = COLOURS[s.colour]
        if s.start != s.end:  # a moving shape also changes inside, as real objects do
            stripe = inside & (((xx - x0 + int(40 * u)) // 6) % 3 == 0)
            frame[stripe] = np.array(COLOURS[s.colour]) * 0.8
    return (frame * shot.brightness).astype(np.uint8)


def make_video(
    path: str | Path,
    shots: list[Shot],
    *,
    fps: int = 10,
    size: tuple[int, int] = (192, 144),
    codec: str = "mpeg4",
    rotation: int = 0,
) -> Path:
    """Write ``shots`` back to back (hard cuts) to ``path``; ``rotation``: the display rotation
    (degrees counter-clockwise) a player applies — the frames are stored unrotated."""
    from .video import require_av

    av = require_av()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.bit_rate = 2_000_000
        if rotation:
            stream.set_display_rotation(rotation)
        for number, shot in enumerate(shots):
            frames = int(round(shot.seconds * fps))
            for i in range(frames):
                array = render(shot, i / max(frames - 1, 1), size, seed=number)
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def standard_shots(scale: float = 1.0) -> list[Shot]:
    """Shot 0 (2 s): a red square and a blue circle moving. Shot 1 (2 s): a yellow square moving
    and a green square that never moves. Shot 2 (1.5 s): dark. Positions for a 192×144 frame,
    times ``scale``."""

    def shape(colour, kind, start, end, size0, size1):
        return Shape(
            colour,
            kind,
            (start[0] * scale, start[1] * scale),
            (end[0] * scale, end[1] * scale),
            size0 * scale,
            size1 * scale,
        )

    return [
        Shot(
            2.0,
            (90, 90, 100),
            (
                shape("red", "square", (40, 50), (120, 60), 30, 44),
                shape("blue", "circle", (150, 110), (110, 100), 36, 30),
            ),
        ),
        Shot(
            2.0,
            (170, 160, 150),
            (
                shape("yellow", "square", (150, 40), (60, 80), 34, 40),
                shape("green", "square", (40, 110), (40, 110), 30, 30),
            ),
        ),
        Shot(
            1.5,
            (120, 120, 120),
            (shape("red", "square", (90, 70), (100, 70), 40, 40),),
            brightness=0.05,
        ),
    ]


STANDARD_CAPTION = "a red square, a blue circle, a yellow square and a green square"


def write_demo_videos(
    directory: str | Path,
    count: int = 4,
    *,
    size: tuple[int, int] = (192, 144),
    fps: int = 10,
    captions: bool = False,
) -> list[Path]:
    """``count`` videos of the standard shots (rotated, so each differs) in ``directory``;
    ``captions`` also writes a ``<video>.txt`` sidecar caption next to each."""
    directory = Path(directory)
    scale = min(size[0] / 192, size[1] / 144)
    shots = standard_shots(scale)
    paths = []
    for k in range(count):
        order = shots[k % len(shots) :] + shots[: k % len(shots)]
        path = make_video(directory / f"shapes_{k:03d}.mp4", order, fps=fps, size=size)
        if captions:
            path.with_suffix(".txt").write_text(STANDARD_CAPTION + "\n")
        paths.append(path)
    return paths


def demo_settings() -> dict:
    """Build settings for the demo videos with the ``random-tiny`` models: small frames, and
    filters that keep the random models' boxes (their scores and similarities mean nothing)."""
    return {
        "image_format": "png",
        "video": {
            "sample_fps": 4.0,
            "min_side": 64,
            "min_gap_s": 1.0,
            "max_references": 2,
            "min_sharpness": 5.0,
        },
        "raw": {"min_score": 0.0},
        "filters": {
            "score_threshold": 0.0,
            "min_box_area": 0.002,
            "max_box_area": 0.9,
            "max_aspect": 6.0,
            "min_box_side": 6,
        },
        "match": {
            "similarity_threshold": -1.0,
            "duplicate_similarity": 1.5,
            "min_mask_fraction": 0.0,
        },
        "models": {"preset": "random-tiny", "batch_size": 4},
    }


class ColourDetector:
    """Finds phrases that name a colour ("red square") as the bounding box of that colour."""

    def __init__(self, tolerance: float = 70.0):
        self.tolerance = tolerance

    def detect(self, images: list, phrases: list[list[str]]) -> list[list]:
        from .boxes import Detection

        out = []
        for image, names in zip(images, phrases, strict=True):
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
            h, w = pixels.shape[:2]
            found = []
            for p, phrase in enumerate(names):
                colour = next((COLOURS[c] for c in COLOURS if c in phrase.lower()), None)
                if colour is None:
                    continue
                near = np.abs(pixels - np.array(colour)).max(-1) < self.tolerance
                if near.sum() < 20:
                    continue
                ys, xs = np.nonzero(near)
                box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
                found.append(Detection(tuple(float(v) for v in box), 0.9, p))
            out.append(found)
        return out


def colour_detector(
    path: str | None, device: object, dtype: object, **options: float
) -> ColourDetector:
    """``ColourDetector`` as a detector plug-in: ``{"kind": "msdiffusion.data.synthetic:
    colour_detector"}`` in ``config.models.detector``."""
    return ColourDetector(**options)
