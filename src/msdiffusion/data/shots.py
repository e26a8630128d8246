"""Shots, frame quality and the target/reference time rule.

* Cuts: a hard cut changes most pixels at once, so a frame whose 64-px RGB thumbnail differs from
  the previous one by more than ``cut_threshold`` (mean absolute difference, values in [0, 1])
  *and* by ``cut_ratio`` times the median difference of its neighbours starts a new shot. Motion
  inside a shot changes fewer pixels; fast sustained motion (a whip pan) raises every difference
  around it, which the ratio test discounts — a cut is a spike.
* Quality: dark frames (mean luma), blurry frames (variance of the Laplacian) and frames too small
  to train on are dropped before any model sees them.
* Pairs: per shot, the target is the kept frame nearest the shot's middle that has at least one
  other kept frame ``min_gap_s`` (and at most ``max_gap_s``) away in the same shot; those frames,
  farthest first, are its reference candidates — so a subject's reference shows it at another
  moment, not the target's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["find_cuts", "split_shots", "frame_quality", "Pair", "choose_pair"]


def find_cuts(
    frame_times: np.ndarray,
    diffs: np.ndarray,
    threshold: float,
    *,
    ratio: float = 3.0,
    window: int = 8,
) -> list[float]:
    """Times at which a new shot starts (excluding the video's start).

    ``diffs[i]``: difference of frame i to frame i - 1. Frame i starts a shot when
    ``diffs[i] > threshold`` and ``diffs[i] > ratio * median(diffs of the ±window neighbours)``.
    """
    cuts = []
    for i in np.nonzero(diffs > threshold)[0]:
        lo, hi = max(1, i - window), min(len(diffs), i + window + 1)
        around = np.concatenate([diffs[lo:i], diffs[i + 1 : hi]])
        if around.size == 0 or diffs[i] > ratio * float(np.median(around)):
            cuts.append(float(frame_times[i]))
    return cuts


def split_shots(start: float, end: float, cuts: list[float]) -> list[tuple[float, float]]:
    """``[start, end)`` cut at ``cuts`` → the shots' ``(start, end)`` intervals, in order."""
    edges = [start] + sorted(c for c in cuts if start < c < end) + [end]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def frame_quality(image: Image.Image) -> tuple[float, float]:
    """``(brightness in [0, 1], sharpness)`` of a frame.

    Sharpness is the variance of the 4-neighbour Laplacian of the 0..255 grey image shrunk to at
    most 256 pixels on its long side (so it does not depend on the video's resolution).
    """
    grey = image.convert("L")
    if max(grey.size) > 256:
        grey = grey.reduce(-(-max(grey.size) // 256))  # box filter by an integer factor: fast
    g = np.asarray(grey, dtype=np.float32)  # (H, W)
    brightness = float(g.mean() / 255.0)
    if min(g.shape) < 3:
        return brightness, 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return brightness, float(lap.var())


@dataclass(frozen=True)
class Pair:
    """A target frame index and its reference candidates (indices into the shot's frames)."""

    target: int
    references: tuple[int, ...]


def choose_pair(
    times: list[float],
    shot: tuple[float, float],
    *,
    min_gap: float,
    max_gap: float | None,
    max_references: int,
) -> Pair | None:
    """Pick the target and reference frames of one shot, or None when no pair meets the gap.

    ``times`` are the kept frames' times inside ``shot``; indices refer to it.
    """
    middle = (shot[0] + shot[1]) / 2
    order = sorted(range(len(times)), key=lambda i: (abs(times[i] - middle), times[i]))
    for i in order:
        gaps = [(abs(times[j] - times[i]), j) for j in range(len(times)) if j != i]
        ok = [
            (g, j)
            for g, j in gaps
            if g + 1e-9 >= min_gap and (max_gap is None or g <= max_gap + 1e-9)
        ]
        if ok:
            ok.sort(key=lambda gj: (-gj[0], gj[1]))  # farthest first; ties: earlier frame
            return Pair(i, tuple(j for _, j in ok[:max_references]))
    return None
