"""Metric arithmetic: cosines, box geometry, detection matching, M-DINO, summaries, conventions.

Pure functions on tensors, boxes and PIL images — no models — so every number the harness reports
can be checked by hand. Boxes are ``(x0, y0, x1, y1)`` normalised to the image (x = column).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from PIL import Image

from ..errors import InputError

__all__ = [
    "SIMILARITY_METRICS",
    "apply_convention",
    "assign_detections",
    "box_iou",
    "box_to_pixels",
    "cosine_rows",
    "crop_box",
    "m_dino",
    "nms",
    "product_score",
    "summarize",
]

Box = tuple[float, float, float, float]
# Metrics that are cosines (or products of cosines): the ones the x100 convention rescales.
SIMILARITY_METRICS = ("clip_t", "clip_i", "dino", "clip_i_box", "dino_box", "clip_i_det",
                      "dino_det", "m_dino_box", "m_dino_det")


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows: (N, D), (N, D) -> (N,), computed in float64."""
    if a.shape != b.shape:
        raise ValueError(f"cosine_rows needs equal shapes, got {tuple(a.shape)}, {tuple(b.shape)}")
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def box_to_pixels(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel rectangle ``(left, top, right, bottom)`` (right/bottom exclusive) covering ``box``.

    Same rule as the attention masks: floor the start, ceil the end, per axis with its own size —
    so a box means the same region on non-square images. At least one pixel wide and high.
    """
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    left, right = math.floor(x0 * width), math.ceil(x1 * width)
    top, bottom = math.floor(y0 * height), math.ceil(y1 * height)
    left, top = min(left, width - 1), min(top, height - 1)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The part of ``image`` inside normalised ``box``."""
    return image.crop(box_to_pixels(box, image.width, image.height))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``xyxy`` boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> list[int]:
    """Greedy non-maximum suppression: indices of kept boxes, best first. (K, 4), (K,) -> list."""
    order = torch.argsort(scores, descending=True).tolist()
    kept: list[int] = []
    for i in order:
        if all(box_iou(boxes[i].tolist(), boxes[j].tolist()) <= iou_threshold for j in kept):
            kept.append(i)
    return kept


def assign_detections(candidates: Sequence[Box], targets: Sequence[Box]) -> list[int]:
    """Which candidate box each target gets: distinct candidates maximising the summed IoU.

    Used when several subjects share a phrase (two dogs): the detector's top distinct boxes for
    the phrase are matched to the requested boxes. With fewer candidates than targets, the extra
    targets take the candidate that overlaps them most (so every subject is scored).
    """
    if not candidates:
        raise ValueError("assign_detections needs at least one candidate")
    n, m = len(targets), len(candidates)
    iou = [[box_iou(t, c) for c in candidates] for t in targets]
    if m >= n:
        # ties go to the better-scored candidates (lower index)
        best = max(itertools.permutations(range(m), n),
                   key=lambda p: (sum(iou[t][c] for t, c in enumerate(p)), [-c for c in p]))
        return list(best)
    return [max(range(m), key=lambda c: (iou[t][c], -c)) for t in range(n)]


def product_score(values: Sequence[float]) -> float:
    """Product of per-subject similarities, each clamped at 0 (two failures never multiply into a
    success)."""
    return math.prod(max(float(v), 0.0) for v in values)


def m_dino(per_image_subject_scores: Sequence[Sequence[float]]) -> float:
    """M-DINO: per image, the product of its subjects' DINO scores; then the mean over images."""
    if not per_image_subject_scores:
        raise ValueError("m_dino needs at least one image")
    return sum(product_score(s) for s in per_image_subject_scores) / len(per_image_subject_scores)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, count and 95% half-width (normal approximation)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "ci95": 1.96 * std / math.sqrt(n)}


def apply_convention(metric: str, value: float | None, *, percent: bool = False,
                     clip_t_weight: float | None = None) -> float | None:
    """Raw by default. ``clip_t_weight`` w: CLIP-T as CLIPScore, w·max(cos, 0) (w = 2.5 in the
    CLIPScore paper); ``percent``: similarity metrics ×100 (IoU stays a fraction)."""
    if value is None:
        return None
    if clip_t_weight is not None and clip_t_weight <= 0:
        raise InputError("clip_t_weight", "must be > 0", clip_t_weight)
    if metric == "clip_t" and clip_t_weight is not None:
        value = clip_t_weight * max(value, 0.0)
    if percent and metric in SIMILARITY_METRICS:
        value = 100.0 * value
    return value
