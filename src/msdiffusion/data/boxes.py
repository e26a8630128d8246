"""Detections and the filters that turn them into subjects.

Boxes are ``(x0, y0, x1, y1)`` normalised to [0, 1] of their image (x = column), as in the
manifest. Filters run in a fixed order — score, size, aspect, NMS, top-N — and each counts what it
kept (``after_<filter>``), so the report shows where detections were lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import FilterConfig
from .stats import Stats

__all__ = ["Detection", "iou_matrix", "nms", "filter_detections", "clamp_box", "pixel_box"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One box of a phrase: ``phrase`` indexes the phrase list the detector was given."""

    box: Box
    score: float
    phrase: int


def clamp_box(box: Box | list[float]) -> Box:
    """Clip to [0, 1] and order the corners."""
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def pixel_box(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Normalised box → integer pixel box of an image of ``size = (width, height)`` (non-empty)."""
    w, h = size
    x0, y0 = int(np.floor(box[0] * w)), int(np.floor(box[1] * h))
    x1, y1 = int(np.ceil(box[2] * w)), int(np.ceil(box[3] * h))
    x0, y0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4) → (N, M)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(detections: list[Detection], iou: float) -> list[Detection]:
    """Greedy class-agnostic NMS: highest score first; drops boxes overlapping a kept one > iou."""
    order = sorted(detections, key=lambda d: (-d.score, d.phrase, d.box))
    if not order:
        return []
    boxes = np.asarray([d.box for d in order], dtype=np.float64)
    overlaps = iou_matrix(boxes, boxes)
    kept: list[int] = []
    for i in range(len(order)):
        if all(overlaps[i, k] <= iou for k in kept):
            kept.append(i)
    return [order[i] for i in kept]


def filter_detections(detections: list[Detection], cfg: FilterConfig, size: tuple[int, int],
                      stats: Stats) -> list[Detection]:
    """Apply score, size, aspect, NMS and top-N filters; best-scoring subjects first."""
    w, h = size
    stats.add("detections", len(detections))
    kept = [d for d in detections if d.score >= cfg.score_threshold]
    stats.add("after_score", len(kept))
    stats.skip("detection:low_score", len(detections) - len(kept))

    def size_ok(d: Detection) -> bool:
        bw, bh = (d.box[2] - d.box[0]), (d.box[3] - d.box[1])
        area = bw * bh
        return (cfg.min_box_area <= area <= cfg.max_box_area
                and bw * w >= cfg.min_box_side and bh * h >= cfg.min_box_side)

    before = len(kept)
    kept = [d for d in kept if size_ok(d)]
    stats.add("after_size", len(kept))
    stats.skip("detection:box_size", before - len(kept))

    def aspect(d: Detection) -> float:
        bw, bh = (d.box[2] - d.box[0]) * w, (d.box[3] - d.box[1]) * h
        return max(bw, bh) / max(min(bw, bh), 1e-9)

    before = len(kept)
    kept = [d for d in kept if aspect(d) <= cfg.max_aspect]
    stats.add("after_aspect", len(kept))
    stats.skip("detection:aspect", before - len(kept))

    before = len(kept)
    kept = nms(kept, cfg.nms_iou)
    stats.add("after_nms", len(kept))
    stats.skip("detection:nms", before - len(kept))

    before = len(kept)
    kept = kept[:cfg.max_subjects]
    stats.add("after_top_n", len(kept))
    stats.skip("detection:over_max_subjects", before - len(kept))
    return kept
