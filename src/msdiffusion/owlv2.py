"""OWLv2's image geometry, shared by the data pipeline's detector and the scoring detector.

OWLv2 sees a square: the image padded at the bottom and right with grey (0.5, as the model's own
preprocessing pads it), resized, CLIP-normalised; its boxes are centre/size boxes of that square.
This is done here with Pillow — transformers' ``Owlv2ImageProcessor`` needs SciPy (its fast one
torchvision) and, in the pinned transformers, pads with black — with an antialiased bilinear
resize instead of SciPy's Gaussian + zoom: boxes differ by a fraction of a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["PAD_GREY", "owlv2_pixels", "owlv2_boxes"]

PAD_GREY = (128, 128, 128)  # 0.5 of the 8-bit range


def owlv2_pixels(
    images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Images → OWLv2's input: padded to a square (bottom/right, grey), resized to ``size``²,
    normalised with ``mean``/``std``. (B,) images → (B, 3, size, size) float32."""
    mean_, std_ = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    batch = []
    for image in images:
        image = image.convert("RGB")
        side = max(image.size)
        square = Image.new("RGB", (side, side), PAD_GREY)
        square.paste(image, (0, 0))
        square = square.resize((size, size), Image.Resampling.BILINEAR)
        values = np.asarray(square, dtype=np.float32) / 255.0  # (size, size, 3)
        batch.append(torch.from_numpy((values - mean_) / std_).permute(2, 0, 1))  # (3, s, s)
    return torch.stack(batch)


def owlv2_boxes(pred_boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """OWLv2's boxes ``(..., 4)`` (cx, cy, w, h of the padded square) → ``(..., 4)`` boxes
    normalised to the image ``(width, height)``, clipped to it."""
    width, height = image_size
    side = max(width, height)
    cx, cy, w, h = pred_boxes.float().unbind(-1)
    sx, sy = side / width, side / height  # square-normalised → image-normalised
    xyxy = torch.stack(
        [(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], -1
    )
    return xyxy.clamp(0.0, 1.0)
