"""Cropping a subject out of a frame, with a margin, keeping track of where its box lands.

A reference is stored as a crop around the subject (smaller than the whole frame) together with
the subject's box inside that crop (``reference_box``) and the matching part of its mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..geometry import Box, box_to_pixels, clamp_box

__all__ = ["Crop", "crop_with_margin", "crop_signature", "signature_diff"]

SIGNATURE_SIDE = 32


@dataclass(frozen=True)
class Crop:
    """A crop of an image: the pixels, the subject's box inside it (normalised), the rectangle."""

    image: Image.Image
    box: Box
    rect: tuple[int, int, int, int]  # (left, top, right, bottom) in the source image's pixels


def crop_with_margin(
    image: Image.Image, box: Box, margins: tuple[float, float, float, float]
) -> Crop:
    """Crop ``box`` grown by ``margins`` (left, top, right, bottom; fractions of the box size)."""
    w, h = image.size
    x0, y0, x1, y1 = box_to_pixels(box, w, h)
    bw, bh = x1 - x0, y1 - y0
    left = max(0, int(round(x0 - margins[0] * bw)))
    top = max(0, int(round(y0 - margins[1] * bh)))
    right = min(w, int(round(x1 + margins[2] * bw)))
    bottom = min(h, int(round(y1 + margins[3] * bh)))
    cw, ch = right - left, bottom - top
    inner = clamp_box(((x0 - left) / cw, (y0 - top) / ch, (x1 - left) / cw, (y1 - top) / ch))
    return Crop(image.crop((left, top, right, bottom)), inner, (left, top, right, bottom))


def crop_signature(image: Image.Image, box: Box) -> np.ndarray:
    """The box's pixels shrunk to 32×32 RGB in [0, 1]: a cheap exact-copy detector."""
    region = image.crop(box_to_pixels(box, *image.size))
    small = region.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0  # (32, 32, 3)


def signature_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two signatures, in [0, 1]."""
    return float(np.abs(a - b).mean())
