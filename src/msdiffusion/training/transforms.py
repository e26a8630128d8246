"""Geometry of a training sample (DESIGN §2.4): resize + crop the target, move its boxes along,
cut references out of their own frame.

The target is resized so that it covers the training size (the short side for square training),
then cropped (centre or random). Boxes follow: scaled, shifted by the crop, clamped to the crop,
normalised. A box with less than one pixel left in either direction is empty (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..encoding import REFERENCE_SIZE
from ..geometry import Box, box_to_pixels

__all__ = [
    "CropGeometry",
    "crop_geometry",
    "resize_and_crop",
    "transform_box",
    "add_time_ids",
    "cut_reference",
    "reference_pixels",
    "image_to_tensor",
    "INTERPOLATION",
]

INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class CropGeometry:
    """How a source image of ``original_size`` became a ``target_size`` training image.

    Sizes are (height, width); ``top``/``left`` are the crop's offsets in the resized image — the
    SDXL micro-conditioning's ``crops_coords_top_left``.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    top: int
    left: int
    target_size: tuple[int, int]


def crop_geometry(
    original_size: tuple[int, int],
    target_size: tuple[int, int],
    mode: str = "center",
    rng: np.random.Generator | None = None,
) -> CropGeometry:
    """Resize to cover ``target_size`` (aspect kept), then a centre or random crop."""
    (h, w), (th, tw) = original_size, target_size
    scale = max(th / h, tw / w)
    rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
    if mode == "center":
        top, left = int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0))
    elif mode == "random":
        if rng is None:
            raise ValueError("a random crop needs an rng")
        top, left = int(rng.integers(0, rh - th + 1)), int(rng.integers(0, rw - tw + 1))
    else:
        raise ValueError(f"unknown crop mode {mode!r}")
    return CropGeometry((h, w), (rh, rw), top, left, (th, tw))


def resize_and_crop(image: Image.Image, geometry: CropGeometry) -> Image.Image:
    """Apply ``geometry`` to ``image`` (bilinear resize, then crop)."""
    rh, rw = geometry.resized_size
    th, tw = geometry.target_size
    resized = image.resize((rw, rh), Image.Resampling.BILINEAR)
    return resized.crop((geometry.left, geometry.top, geometry.left + tw, geometry.top + th))


def transform_box(box: Box, geometry: CropGeometry) -> Box | None:
    """A box normalised to the source image → normalised to the crop; ``None`` if < 1 px is left."""
    rh, rw = geometry.resized_size
    th, tw = geometry.target_size
    x0, y0, x1, y1 = box
    # source-normalised → resized pixels → crop pixels, clamped to the crop
    cx0 = min(max(x0 * rw - geometry.left, 0.0), tw)
    cx1 = min(max(x1 * rw - geometry.left, 0.0), tw)
    cy0 = min(max(y0 * rh - geometry.top, 0.0), th)
    cy1 = min(max(y1 * rh - geometry.top, 0.0), th)
    if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
        return None
    return (cx0 / tw, cy0 / th, cx1 / tw, cy1 / th)


def add_time_ids(geometry: CropGeometry) -> tuple[int, int, int, int, int, int]:
    """SDXL micro-conditioning: original size (h, w), crop top-left (top, left), target (h, w)."""
    return (*geometry.original_size, geometry.top, geometry.left, *geometry.target_size)


def cut_reference(image: Image.Image, box: Box | None, mask: Image.Image | None) -> Image.Image:
    """Crop a reference to its box (in its own frame) and zero the pixels outside its mask.

    ``mask`` has the reference's size; pixels above 50 % are the subject. The box covers whole
    pixels (``geometry.box_to_pixels``: floor of the start, ceil of the end).
    """
    if mask is not None and mask.size != image.size:
        raise ValueError(f"mask size {mask.size} != reference size {image.size}")
    if box is not None:
        rect = box_to_pixels(box, *image.size)
        image = image.crop(rect)
        mask = None if mask is None else mask.crop(rect)
    if mask is not None:
        keep = np.asarray(mask.convert("L"), dtype=np.uint8) > 127  # (h, w)
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8) * keep[..., None]  # (h, w, 3)
        image = Image.fromarray(pixels, "RGB")
    return image


def reference_pixels(
    image: Image.Image, feature_extractor: Any, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Cut reference → 512² (DESIGN §2.1 step 1) → the image encoder's preprocessing,
    ``(3, s, s)``."""
    square = image.convert("RGB").resize(
        (REFERENCE_SIZE, REFERENCE_SIZE), INTERPOLATION[interpolation]
    )
    return feature_extractor(images=[square], return_tensors="pt").pixel_values[0]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL → ``(3, H, W)`` float in [-1, 1] (the VAE's input range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)
