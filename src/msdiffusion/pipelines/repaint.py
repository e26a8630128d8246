"""Where an inpainting call repaints, in latent cells, and whether each subject's region lies
inside it — one rule for the inpainting pipeline and for a request checked before any model loads.

A latent cell (``factor × factor`` pixels of the output) is repainted when any of its pixels is
white (≥ 0.5) in the mask resized to the output (diffusers' binarised mask, max-pooled to the latent
grid); a subject's region (its box, or its mask) may only cover repainted cells.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor

from ..errors import InputError
from ..geometry import Box, rasterize_boxes
from .subjects import mask_to_grid

__all__ = ["repaint_cells", "regions_outside"]


def repaint_cells(mask_image: Any, size: tuple[int, int], factor: int) -> torch.Tensor:
    """The repainted latent cells of each mask: bool (n, H / factor, W / factor) for an output of
    ``size`` (height, width). ``mask_image``: what diffusers' inpainting takes (PIL, array,
    tensor, or a list)."""
    processor = VaeImageProcessor(
        vae_scale_factor=factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    mask = processor.preprocess(mask_image, height=size[0], width=size[1])  # (n, 1, H, W)
    grid = (size[0] // factor, size[1] // factor)
    return F.adaptive_max_pool2d(mask.float(), grid)[:, 0] > 0.5  # (n, h, w)


def regions_outside(
    regions: Iterable[tuple[tuple[Any, ...], Box | None, np.ndarray | None]],
    inside: torch.Tensor,
    factor: int,
    mask_name: str = "mask_image",
) -> list[InputError]:
    """One error per region (``(where, box, mask)``: a box, or a bool mask, or neither — auto
    layout, skipped) that covers latent cells outside ``inside`` (bool (h, w)); ``mask_name``:
    how the messages name the inpainting mask."""
    grid = tuple(inside.shape)
    errors = []
    for where, box, mask in regions:
        if mask is not None:
            cells, what, value = mask_to_grid(mask, grid), "mask", "its mask"
        elif box is not None:
            cells, what, value = rasterize_boxes(torch.tensor(box), *grid), "box", box
        else:
            continue
        outside = int((cells & ~inside).sum())
        if outside:
            errors.append(
                InputError(
                    (*where, what),
                    f"must lie inside the repaint area of {mask_name} (white): {outside} of its "
                    f"{int(cells.sum())} latent cells ({factor}×{factor} pixels) are outside",
                    list(value) if isinstance(value, tuple) else value,
                )
            )
    return errors
