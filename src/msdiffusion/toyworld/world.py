"""The toy world: scenes of patterned silhouettes, deterministic from a seed.

A *subject* is a silhouette class named by a phrase ("ball", "star", …) with an *identity* the
phrase does not tell: a body colour, a second colour and a pattern (stripes, checks or dots, with
a frequency, an orientation and a phase). A *scene* puts 1–3 subjects of different classes in
boxes on a background the caption names ("a ball and a star on sand"). A *reference* shows the
same subject in another frame — other size, a small rotation and shift, another background — the
paper's video-pair recipe in miniature.

Identities are split by colour pair: :data:`HELD_OUT_PAIRS` never occur in training scenes, so a
held-out identity is a colour combination the trained model has never seen with any class; its
identity can only come from the reference.

Everything is a pure function of ``(seed, split, index)``: records can be made in any order, in
parallel, and again later, with the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..geometry import box_iou, crop_box, mask_bbox

__all__ = [
    "SUBJECT_COLORS",
    "BACKGROUNDS",
    "CLASSES",
    "PATTERNS",
    "HELD_OUT_PAIRS",
    "IMAGE_SIZE",
    "Identity",
    "Placed",
    "Scene",
    "Reference",
    "sample_identity",
    "sample_scene",
    "sample_reference",
    "render",
    "caption",
    "is_held_out",
    "held_out_subjects",
]

IMAGE_SIZE = 64  # side of the world's images, in pixels
SUPERSAMPLE = 4  # pixels are rendered at 4× and box-filtered: smooth edges, exact colours inside

# Subject colours and background colours are far apart in RGB (≥ 80), so a pixel's nearest palette
# entry tells what it shows (the toy metrics rely on it).
SUBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (240, 210, 30),
    "blue": (31, 80, 200),
    "purple": (128, 52, 176),
    "pink": (240, 120, 190),
    "black": (20, 20, 20),
    "teal": (20, 160, 150),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "sand": (225, 200, 150),
    "grass": (100, 170, 80),
    "sky": (160, 205, 245),
    "snow": (240, 240, 245),
    "stone": (128, 128, 128),
}
CLASSES = ("ball", "star", "ring", "vase", "kite", "tent", "cross", "moon")
PATTERNS = ("stripes", "checks", "dots")
_COLOR_NAMES = tuple(SUBJECT_COLORS)
# A cycle over the eight colours: every colour is in two held-out pairs and five training pairs.
HELD_OUT_PAIRS: frozenset[frozenset[str]] = frozenset(
    frozenset((_COLOR_NAMES[i], _COLOR_NAMES[(i + 1) % len(_COLOR_NAMES)]))
    for i in range(len(_COLOR_NAMES))
)
_SPLITS = {"train": 0, "heldout": 1, "reference": 2, "bench": 3}


def is_held_out(primary: str, secondary: str) -> bool:
    """Whether the colour pair (in either order) is reserved for held-out identities."""
    return frozenset((primary, secondary)) in HELD_OUT_PAIRS


@dataclass(frozen=True)
class Identity:
    """What a subject looks like, beyond its class: colours and a pattern in its own frame."""

    primary: str  # body colour (a SUBJECT_COLORS name)
    secondary: str  # pattern colour
    pattern: str  # stripes | checks | dots
    frequency: float  # pattern periods across the subject (its own frame, so it scales with it)
    angle: float  # pattern orientation, degrees
    phase: float  # pattern offset, in periods

    @property
    def colors(self) -> tuple[str, str]:
        return (self.primary, self.secondary)

    @property
    def held_out(self) -> bool:
        return is_held_out(self.primary, self.secondary)


@dataclass(frozen=True)
class Placed:
    """A subject placed in an image: class, identity, box (normalised), rotation (degrees)."""

    cls: str
    identity: Identity
    box: tuple[float, float, float, float]
    rotation: float = 0.0


@dataclass(frozen=True)
class Scene:
    """A target image's content: subjects in drawing order (later ones on top)."""

    background: str
    subjects: tuple[Placed, ...]
    texture_seed: int

    @property
    def caption(self) -> str:
        return caption([s.cls for s in self.subjects], self.background)


@dataclass(frozen=True)
class Reference:
    """Another frame showing one subject, and where the subject is in it."""

    scene: Scene
    box: tuple[float, float, float, float]  # tight box of the subject in the frame (normalised)
    image: Image.Image = field(compare=False, repr=False)  # the rendered frame

    def crop(self) -> Image.Image:
        """The subject's box of the frame (what a reference image is)."""
        return crop_box(self.image, self.box)


def caption(classes: Sequence[str], background: str) -> str:
    """ "a ball on sand", "a ball and a star on sand", "a ball, a star and a ring on sand"."""
    names = [f"a {c}" for c in classes]
    if len(names) == 1:
        listed = names[0]
    else:
        listed = ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} on {background}"


def _rng(seed: int, split: str, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLITS[split], index, salt])


def sample_identity(
    rng: np.random.Generator, *, held_out: bool, pair: tuple[str, str] | None = None
) -> Identity:
    """A random identity whose colour pair is held out (or not). ``pair`` fixes the colours."""
    if pair is None:
        pairs = [
            (a, b)
            for a in _COLOR_NAMES
            for b in _COLOR_NAMES
            if a != b and is_held_out(a, b) == held_out
        ]
        primary, secondary = pairs[int(rng.integers(len(pairs)))]
    else:
        primary, secondary = pair
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    return Identity(
        primary=primary,
        secondary=secondary,
        pattern=pattern,
        frequency=float(rng.uniform(1.5, 2.5)),
        angle=float(rng.choice([0.0, 45.0, 90.0, 135.0])),
        phase=float(rng.uniform(0.0, 1.0)),
    )


def _box_side_range(count: int) -> tuple[float, float]:
    return {1: (0.4, 0.75), 2: (0.32, 0.55), 3: (0.28, 0.45)}[count]


def sample_boxes(
    rng: np.random.Generator, count: int, *, max_iou: float = 0.2, tries: int = 200
) -> list[tuple[float, float, float, float]]:
    """``count`` boxes of varied size and place; pairs overlap at most ``max_iou`` (sometimes)."""
    low, high = _box_side_range(count)
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(tries * count):
        side = rng.uniform(low, high)
        aspect = math.exp(rng.uniform(-0.25, 0.25))  # width / height
        w, h = min(0.95, side * math.sqrt(aspect)), min(0.95, side / math.sqrt(aspect))
        x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
        box = (round(x0, 4), round(y0, 4), round(x0 + w, 4), round(y0 + h, 4))
        if all(box_iou(box, other) <= max_iou for other in boxes):
            boxes.append(box)
            if len(boxes) == count:
                return boxes
    raise RuntimeError(f"could not place {count} boxes")  # unreachable for these sizes


def sample_scene(
    seed: int,
    split: str,
    index: int,
    *,
    count: int | None = None,
    identities: Sequence[Identity] | None = None,
    classes: Sequence[str] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    background: str | None = None,
) -> Scene:
    """Scene ``index`` of ``split`` ("train": training identities; "heldout"/"bench": held-out
    ones). Any of count, identities, classes, boxes, background may be fixed by the caller."""
    rng = _rng(seed, split, index)
    if count is None:
        count = len(identities or classes or boxes or []) or int(rng.choice([1, 2, 2, 3, 3]))
    held_out = split != "train"
    if classes is None:
        classes = [CLASSES[i] for i in rng.permutation(len(CLASSES))[:count]]
    if identities is None:
        identities = [sample_identity(rng, held_out=held_out) for _ in range(count)]
    if boxes is None:
        boxes = sample_boxes(rng, count)
    if background is None:
        background = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    if not (len(classes) == len(identities) == len(boxes) == count):
        raise ValueError("classes, identities and boxes must have one entry per subject")
    subjects = tuple(
        Placed(c, ident, tuple(float(v) for v in b))  # type: ignore[arg-type]
        for c, ident, b in zip(classes, identities, boxes)
    )
    return Scene(background=background, subjects=subjects, texture_seed=int(rng.integers(2**31)))


def sample_reference(
    subject: Placed, seed: int, key: int, *, avoid_background: str | None = None
) -> Reference:
    """Another frame of ``subject``: other size and place, a rotation of up to ±15°, another
    background than ``avoid_background``. ``key`` makes different references of one subject."""
    rng = _rng(seed, "reference", key)
    names = [b for b in BACKGROUNDS if b != avoid_background]
    background = names[int(rng.integers(len(names)))]
    side = rng.uniform(0.45, 0.8)
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
    x0, y0 = rng.uniform(0.05, 0.95 - w), rng.uniform(0.05, 0.95 - h)
    rotation = float(rng.uniform(-15.0, 15.0))
    placed = Placed(subject.cls, subject.identity, (x0, y0, x0 + w, y0 + h), rotation)
    scene = Scene(background=background, subjects=(placed,), texture_seed=int(rng.integers(2**31)))
    image, masks = render(scene)
    box = tuple(round(v, 4) for v in mask_bbox(masks[0] > 0.5))
    return Reference(scene=scene, box=box, image=image)


def held_out_subjects(count: int, seed: int = 0) -> list[tuple[Image.Image, str, Identity]]:
    """``count`` held-out subjects as a user would bring them: (reference image cropped to the
    subject, phrase, identity). Their colour pairs never occur in training scenes."""
    out = []
    for i in range(count):
        subject = sample_scene(seed, "heldout", i, count=1).subjects[0]
        ref = sample_reference(subject, seed, 2 * 10**8 + i)
        out.append((ref.crop(), subject.cls, subject.identity))
    return out


# ---- rendering --------------------------------------------------------------------------------


def _silhouette(cls: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the subject's frame: u (right), v (down) in [-1, 1] span the box."""
    r2 = u * u + v * v
    if cls == "ball":
        return r2 <= 1.0
    if cls == "ring":
        return (r2 <= 1.0) & (r2 >= 0.42**2)
    if cls == "star":
        theta = np.arctan2(v, u) + math.pi / 2  # a point straight up
        k = np.mod(theta, 2 * math.pi / 5) / (2 * math.pi / 5)  # position within one spike
        inner, outer = 0.45, 1.0
        radius = inner + (outer - inner) * np.abs(1.0 - 2.0 * k) ** 1.6
        return np.sqrt(r2) <= radius
    if cls == "vase":
        half_width = 0.32 + 0.68 * np.exp(-(((v - 0.3) / 0.55) ** 2))
        lip = (v < -0.8) & (np.abs(u) <= 0.55)
        return ((np.abs(u) <= half_width) & (v <= 1.0) & (v >= -1.0)) | lip
    if cls == "kite":
        return np.abs(u) + np.abs(v) <= 1.0
    if cls == "tent":
        return (np.abs(u) <= (v + 1.0) / 2.0) & (v <= 1.0)
    if cls == "cross":
        return ((np.abs(u) <= 0.34) | (np.abs(v) <= 0.34)) & (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if cls == "moon":
        cut = (u - 0.5) ** 2 + (v + 0.25) ** 2 <= 0.8**2
        return (r2 <= 1.0) & ~cut
    raise ValueError(f"unknown class {cls!r}")


def _pattern(identity: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """True where the secondary colour shows (same frame as ``_silhouette``)."""
    a = math.radians(identity.angle)
    s = (u * math.cos(a) + v * math.sin(a)) * identity.frequency / 2.0 + identity.phase
    t = (-u * math.sin(a) + v * math.cos(a)) * identity.frequency / 2.0 + identity.phase
    if identity.pattern == "stripes":
        return np.mod(s, 1.0) < 0.5
    if identity.pattern == "checks":
        return (np.floor(s) + np.floor(t)) % 2 == 0
    if identity.pattern == "dots":
        ds, dt = np.mod(s, 1.0) - 0.5, np.mod(t, 1.0) - 0.5
        return ds * ds + dt * dt <= 0.3**2
    raise ValueError(f"unknown pattern {identity.pattern!r}")


def _background(name: str, texture_seed: int, side: int) -> np.ndarray:
    """The named colour with a soft low-frequency texture (±8 levels): (side, side, 3) float."""
    rng = np.random.default_rng(texture_seed)
    coarse = rng.normal(0.0, 1.0, (5, 5, 1))
    up = np.asarray(
        Image.fromarray(coarse[..., 0].astype(np.float32), mode="F").resize(
            (side, side), Image.Resampling.BICUBIC
        )
    )[..., None]
    base = np.asarray(BACKGROUNDS[name], dtype=np.float32)
    return np.clip(base + 8.0 * np.tanh(up), 0, 255) * np.ones((side, side, 3), np.float32)


def render(scene: Scene, size: int = IMAGE_SIZE) -> tuple[Image.Image, list[np.ndarray]]:
    """The scene's RGB image and one visibility mask per subject ((size, size) float in [0, 1],
    the share of each pixel the subject covers after occlusion by later subjects)."""
    big = size * SUPERSAMPLE
    canvas = _background(scene.background, scene.texture_seed, big)  # (big, big, 3)
    centres = (np.arange(big, dtype=np.float32) + 0.5) / big
    xs, ys = np.meshgrid(centres, centres)  # (big, big): x = column, y = row
    owner = np.full((big, big), -1, dtype=np.int16)
    for k, placed in enumerate(scene.subjects):
        x0, y0, x1, y1 = placed.box
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        dx, dy = xs - cx, ys - cy
        rot = math.radians(placed.rotation)
        # undo the subject's rotation, then normalise by the half-sides: the box spans [-1, 1]²
        u = (dx * math.cos(rot) + dy * math.sin(rot)) / hw
        v = (-dx * math.sin(rot) + dy * math.cos(rot)) / hh
        inside = _silhouette(placed.cls, u, v) & (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        second = _pattern(placed.identity, u, v)
        ident = placed.identity
        colour = np.where(
            second[..., None],
            np.asarray(SUBJECT_COLORS[ident.secondary], np.float32),
            np.asarray(SUBJECT_COLORS[ident.primary], np.float32),
        )
        canvas = np.where(inside[..., None], colour, canvas)
        owner[inside] = k
    pixels = canvas.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    masks = [
        (owner == k).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
        for k in range(len(scene.subjects))
    ]
    return image, masks
