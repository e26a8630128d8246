"""Image-only input: a subject's reference is an augmented crop of the target itself.

Without a second view of the subject, the reference is made from the target: a crop around the box
with a random margin, maybe mirrored, resized and colour-jittered — what the MS-Diffusion authors
did for their general-scene data. Such subjects are flagged ``augmented: true`` in the manifest:
they teach less identity than video pairs (the pose is the target's own), and training can weigh
or drop them.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ..geometry import Box
from .config import AugmentConfig
from .crops import Crop, crop_with_margin

__all__ = ["augmented_reference"]


def augmented_reference(
    image: Image.Image, box: Box, mask: np.ndarray | None, cfg: AugmentConfig, rng: random.Random
) -> tuple[Crop, Image.Image | None]:
    """Crop + flip + resize + colour jitter of ``box`` in ``image``; the mask follows the geometry.

    Returns the crop (its ``box`` is the subject's box inside the augmented crop) and the mask
    crop as an ``L`` image (or None).
    """
    margins = tuple(rng.uniform(*cfg.margin) for _ in range(4))
    crop = crop_with_margin(image, box, margins)  # type: ignore[arg-type]
    out, inner = crop.image, crop.box
    mask_image = None
    if mask is not None:
        mask_image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").crop(crop.rect)
    if rng.random() < cfg.flip_p:
        out = ImageOps.mirror(out)
        inner = (1.0 - inner[2], inner[1], 1.0 - inner[0], inner[3])
        if mask_image is not None:
            mask_image = ImageOps.mirror(mask_image)
    scale = rng.uniform(*cfg.scale)
    size = (max(8, round(out.width * scale)), max(8, round(out.height * scale)))
    out = out.resize(size, Image.Resampling.BICUBIC)
    if mask_image is not None:
        mask_image = mask_image.resize(size, Image.Resampling.NEAREST)
    for enhance, amount in (
        (ImageEnhance.Brightness, cfg.brightness),
        (ImageEnhance.Contrast, cfg.contrast),
        (ImageEnhance.Color, cfg.saturation),
    ):
        factor = rng.uniform(1.0 - amount, 1.0 + amount)
        out = enhance(out).enhance(factor)
    return Crop(out, inner, crop.rect), mask_image
