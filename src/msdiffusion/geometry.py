"""Boxes: validation, rounding to pixels and to attention cells, overlap, suppression.

A box is ``(x0, y0, x1, y1)`` normalised to [0, 1] of its image (x = column, y = row). One rounding
rule serves every grid (DESIGN §2.2): a box covers column c of a W-wide grid iff
``floor(x0·W) ≤ c < ceil(x1·W)``, and rows likewise with H — the attention masks
(:func:`rasterize_boxes`), crops of images (:func:`box_to_pixels`) and the scores measured on them
all mean the same region, on any aspect ratio.

numpy only at import: torch is imported by :func:`rasterize_boxes` when it runs, so code that
works on plain boxes (a scene sampler, detection filters) stays light.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, Location

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "Box",
    "EMPTY_BOX",
    "validate_box",
    "clamp_box",
    "box_to_pixels",
    "crop_box",
    "rasterize_boxes",
    "mask_bbox",
    "box_iou",
    "iou_matrix",
    "nms",
]

Box = tuple[float, float, float, float]
EMPTY_BOX: Box = (0.0, 0.0, 0.0, 0.0)  # covers no cell: a subject without a region


def validate_box(box: Any, argument: str | Location = "box") -> Box:
    """Check a box: four finite numbers in [0, 1] with x0 < x1 and y0 < y1; returns floats.

    Text ``"x0,y0,x1,y1"`` (commas or spaces) is read as the four numbers.
    """
    if isinstance(box, str):
        parts = [p for p in re.split(r"[,\s]+", box.strip()) if p]
        try:
            box = [float(p) for p in parts]
        except ValueError:
            raise InputError(argument, "must be four numbers x0,y0,x1,y1", box) from None
    try:
        items = list(box)
    except TypeError:
        raise InputError(argument, "must be four numbers x0,y0,x1,y1", box) from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
        raise InputError(argument, "must be four numbers x0,y0,x1,y1", box)  # no "0.1", True
    values = [float(v) for v in items]
    if len(values) != 4:
        raise InputError(argument, "must be four numbers x0,y0,x1,y1", box)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise InputError(argument, "coordinates must lie in [0, 1] (normalised to the output)", box)
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise InputError(argument, "needs x0 < x1 and y0 < y1", box)
    return (x0, y0, x1, y1)


def clamp_box(box: Sequence[float]) -> Box:
    """Clip to [0, 1] and order the corners (a detector's raw box → a box)."""
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def box_to_pixels(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel rectangle ``(left, top, right, bottom)`` (right/bottom exclusive) covering ``box``.

    The attention masks' rule — floor the start, ceil the end, per axis with its own size — on a
    box clipped to the image, at least one pixel wide and high.
    """
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    left, right = math.floor(x0 * width), math.ceil(x1 * width)
    top, bottom = math.floor(y0 * height), math.ceil(y1 * height)
    left, top = min(left, width - 1), min(top, height - 1)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The part of ``image`` inside normalised ``box`` (see :func:`box_to_pixels`)."""
    return image.crop(box_to_pixels(box, image.width, image.height))


def rasterize_boxes(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Boxes ``(..., 4)`` normalised → bool cells ``(..., h, w)``; a zero box covers nothing."""
    import torch

    boxes = boxes.float()
    col0, col1 = torch.floor(boxes[..., 0] * w), torch.ceil(boxes[..., 2] * w)  # (...)
    row0, row1 = torch.floor(boxes[..., 1] * h), torch.ceil(boxes[..., 3] * h)
    cols = torch.arange(w, device=boxes.device, dtype=torch.float32)
    rows = torch.arange(h, device=boxes.device, dtype=torch.float32)
    in_x = (cols >= col0[..., None]) & (cols < col1[..., None])  # (..., w)
    in_y = (rows >= row0[..., None]) & (rows < row1[..., None])  # (..., h)
    return in_y[..., :, None] & in_x[..., None, :]  # (..., h, w)


def mask_bbox(mask: np.ndarray) -> Box:
    """Normalised bounding box of a bool mask ``(h, w)`` (the pixels it covers, whole)."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return (cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4) → (N, M), float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)  # (N, M)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)  # (N,)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)  # (M,)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: Any, scores: Any, iou_threshold: float = 0.5) -> list[int]:
    """Greedy class-agnostic non-maximum suppression: the indices kept, best score first (ties:
    the earlier box). A box is dropped when it overlaps a kept one by more than
    ``iou_threshold``. (K, 4), (K,) → list."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return []
    order = np.argsort(-scores, kind="stable").tolist()
    overlaps = iou_matrix(boxes, boxes)  # (K, K)
    kept: list[int] = []
    for i in order:
        if all(overlaps[i, k] <= iou_threshold for k in kept):
            kept.append(i)
    return kept
