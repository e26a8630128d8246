"""Detections and the filters that turn them into subjects.

Boxes are ``(x0, y0, x1, y1)`` normalised to [0, 1] of their image (x = column), as in the
manifest. Filters run in a fixed order — score, size, aspect, NMS, top-N — and each counts what it
kept (``after_<filter>``), so the report shows where detections were lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..geometry import Box, nms
from .config import FilterConfig
from .stats import Stats

__all__ = ["Detection", "nms_detections", "filter_detections"]


@dataclass(frozen=True)
class Detection:
    """One box of a phrase: ``phrase`` indexes the phrase list the detector was given."""

    box: Box
    score: float
    phrase: int


def nms_detections(detections: list[Detection], iou: float) -> list[Detection]:
    """Class-agnostic NMS (``geometry.nms``): highest score first, ties by phrase, then box."""
    order = sorted(detections, key=lambda d: (-d.score, d.phrase, d.box))
    kept = nms([d.box for d in order], [d.score for d in order], iou) if order else []
    return [order[i] for i in kept]


def filter_detections(
    detections: list[Detection], cfg: FilterConfig, size: tuple[int, int], stats: Stats
) -> list[Detection]:
    """Apply score, size, aspect, NMS and top-N filters; best-scoring subjects first."""
    w, h = size
    stats.add("detections", len(detections))
    kept = [d for d in detections if d.score >= cfg.score_threshold]
    stats.add("after_score", len(kept))
    stats.skip("detection:low_score", len(detections) - len(kept))

    def size_ok(d: Detection) -> bool:
        bw, bh = (d.box[2] - d.box[0]), (d.box[3] - d.box[1])
        area = bw * bh
        return (
            cfg.min_box_area <= area <= cfg.max_box_area
            and bw * w >= cfg.min_box_side
            and bh * h >= cfg.min_box_side
        )

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
    kept = nms_detections(kept, cfg.nms_iou)
    stats.add("after_nms", len(kept))
    stats.skip("detection:nms", before - len(kept))

    before = len(kept)
    kept = kept[: cfg.max_subjects]
    stats.add("after_top_n", len(kept))
    stats.skip("detection:over_max_subjects", before - len(kept))
    return kept
