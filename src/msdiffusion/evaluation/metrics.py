"""Metric arithmetic: cosines, detection matching, M-DINO products, conventions.

Pure functions on tensors, boxes and PIL images — no models — so every number the harness reports
can be checked by hand. Box geometry (IoU, crops) is ``msdiffusion.geometry``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from ..errors import InputError
from ..geometry import Box, box_iou

__all__ = [
    "SIMILARITY_METRICS",
    "apply_convention",
    "assign_detections",
    "cosine_rows",
    "product_score",
]

# Metrics that are cosines (or products of cosines): the ones the x100 convention rescales.
SIMILARITY_METRICS = (
    "clip_t",
    "clip_i",
    "dino",
    "clip_i_box",
    "dino_box",
    "clip_i_det",
    "dino_det",
    "m_dino_box",
    "m_dino_det",
)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows: (N, D), (N, D) -> (N,), computed in float64."""
    if a.shape != b.shape:
        raise ValueError(f"cosine_rows needs equal shapes, got {tuple(a.shape)}, {tuple(b.shape)}")
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


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
        best = max(
            itertools.permutations(range(m), n),
            key=lambda p: (sum(iou[t][c] for t, c in enumerate(p)), [-c for c in p]),
        )
        return list(best)
    return [max(range(m), key=lambda c: (iou[t][c], -c)) for t in range(n)]


def product_score(values: Sequence[float]) -> float:
    """Product of per-subject similarities, each clamped at 0 (two failures never multiply into a
    success)."""
    return math.prod(max(float(v), 0.0) for v in values)


def apply_convention(
    metric: str, value: float | None, *, percent: bool = False, clip_t_weight: float | None = None
) -> float | None:
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
