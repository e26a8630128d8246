"""Metrics that are exact for the toy world: a pixel's nearest palette colour says what it shows.

- **identity**: the subject-colour histogram of a box's content is compared (histogram
  intersection) with that of each candidate reference — the sample's own references plus
  distractors; the score is 1 when the right reference is the unique best, ``1/m`` when it ties
  with ``m - 1`` others (an empty box ties with every candidate: chance, ``1/K``), else 0;
- **layout**: the share of a subject's pixels (its two colours) that lie inside its box; a
  subject drawn nowhere scores 0;
- **background**: whether the most common background colour outside the boxes is the one the
  prompt names.

Subjects of one sample must have disjoint colours (the toy benchmark's samples do), so a pixel
belongs to at most one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..geometry import box_to_pixels
from .world import BACKGROUNDS, SUBJECT_COLORS

__all__ = [
    "PALETTE",
    "classify_pixels",
    "colour_histogram",
    "identity_score",
    "layout_share",
    "background_of",
]

PALETTE = np.asarray([*SUBJECT_COLORS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # (P, 3)
N_SUBJECT = len(SUBJECT_COLORS)
MAX_DISTANCE = 60.0  # RGB distance to the nearest palette colour; farther = a blend, unassigned
MIN_PIXELS = 8  # fewer pixels of a subject's colours than this: the subject is absent


def classify_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """``(H, W)`` int: the nearest palette entry of each pixel (subject colours first, in
    ``SUBJECT_COLORS`` order, then backgrounds in ``BACKGROUNDS`` order), -1 when none is within
    ``MAX_DISTANCE``."""
    pixels = np.asarray(
        image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32
    )  # (H, W, 3)
    dist = np.linalg.norm(pixels[:, :, None, :] - PALETTE[None, None], axis=-1)  # (H, W, P)
    labels = dist.argmin(axis=-1)
    labels[dist.min(axis=-1) > MAX_DISTANCE] = -1
    return labels


def colour_histogram(labels: np.ndarray, box: Sequence[float] | None = None) -> np.ndarray:
    """``(N_SUBJECT,)`` shares of the subject colours among the subject-coloured pixels of the
    box (all zeros when there are none)."""
    if box is not None:
        c0, r0, c1, r1 = box_to_pixels(box, labels.shape[1], labels.shape[0])
        labels = labels[r0:r1, c0:c1]
    counts = np.bincount(labels[(labels >= 0) & (labels < N_SUBJECT)], minlength=N_SUBJECT)
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def identity_score(content: np.ndarray, candidates: Sequence[np.ndarray], true_index: int) -> float:
    """Retrieval score of ``content`` among ``candidates`` histograms (see the module doc)."""
    sims = np.asarray([np.minimum(content, c).sum() for c in candidates])
    best = sims.max()
    tied = np.flatnonzero(np.isclose(sims, best, rtol=0.0, atol=1e-9))
    return 1.0 / len(tied) if true_index in tied else 0.0


def layout_share(labels: np.ndarray, colours: Sequence[str], box: Sequence[float]) -> float:
    """Share of the pixels in the subject's colours that lie inside its box (0 if absent)."""
    ids = [list(SUBJECT_COLORS).index(c) for c in colours]
    mine = np.isin(labels, ids)
    total = int(mine.sum())
    if total < MIN_PIXELS:
        return 0.0
    c0, r0, c1, r1 = box_to_pixels(box, labels.shape[1], labels.shape[0])
    return float(mine[r0:r1, c0:c1].sum()) / total


def background_of(labels: np.ndarray, boxes: Sequence[Sequence[float]]) -> str | None:
    """The most common background colour outside every box (None if no background pixel)."""
    outside = np.ones(labels.shape, dtype=bool)
    for box in boxes:
        c0, r0, c1, r1 = box_to_pixels(box, labels.shape[1], labels.shape[0])
        outside[r0:r1, c0:c1] = False
    values = labels[outside]
    values = values[values >= N_SUBJECT] - N_SUBJECT
    if values.size == 0:
        return None
    return list(BACKGROUNDS)[int(np.bincount(values).argmax())]
