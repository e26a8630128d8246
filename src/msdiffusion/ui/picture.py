"""The page's picture to start from, as plain functions (no Gradio here): the *Repaint* choice →
the request's ``init_image`` / ``strength`` / ``inpaint_mask``, the output size fitted to a
picture, and the canvas background.

- *the whole picture*: image-to-image — the picture noised by the strength and remade with the
  prompt and subjects;
- *only inside the boxes*: inpainting with the union of the subjects' boxes as the mask;
- *only inside my mask*: inpainting with an uploaded mask (white = repainted).

Outside the mask the result keeps the picture's own pixels (``inference.generate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

__all__ = [
    "REPAINT_CHOICES",
    "DEFAULT_STRENGTH",
    "fit_size",
    "picture_size",
    "background_url",
    "repaint_from_boxes",
    "picture_arguments",
]

REPAINT_CHOICES = (
    ("the whole picture (image to image)", "whole"),
    ("only inside the boxes (inpainting)", "boxes"),
    ("only inside my mask (inpainting)", "mask"),
)
# the slider's value when the choice changes: enough for new subjects to appear
DEFAULT_STRENGTH = {"whole": 0.8, "boxes": 1.0, "mask": 1.0}
FILE_ROUTE = "/gradio_api/file="  # where the page's server hands out a file it may serve


def fit_size(size: tuple[int, int], default_size: int) -> tuple[int, int]:
    """(width, height) for a picture of ``size`` (width, height): its aspect ratio at the model's
    native area (``default_size``²) — what the model makes well, whatever the photo's resolution
    — or larger where the short side would be under 64 (the page's smallest); multiples of 8."""
    width, height = size
    scale = max(default_size / math.sqrt(width * height), 64 / min(width, height))
    return tuple(max(64, int(round(side * scale / 8)) * 8) for side in (width, height))


def picture_size(path: str | None) -> tuple[int, int] | None:
    """(width, height) of an image file (its header only); None when there is none or it is not
    an image."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # any decoder failure: the request's validation says it next to the field
        return None


def background_url(path: str | None) -> str | None:
    """The URL the browser shows the picture at (an upload, or a file of the results folder)."""
    return None if not path else FILE_ROUTE + quote(str(path))


def repaint_from_boxes(
    boxes: Sequence[Sequence[float]], width: int, height: int
) -> np.ndarray | None:
    """bool (height, width): True inside any of the boxes (normalised ``x0, y0, x1, y1``) — every
    pixel a box touches; None without a box."""
    if not boxes:
        return None
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        columns = slice(int(math.floor(x0 * width)), int(math.ceil(x1 * width)))
        rows = slice(int(math.floor(y0 * height)), int(math.ceil(y1 * height)))
        mask[rows, columns] = True
    return mask


def picture_arguments(
    init_image: str | None,
    repaint: str,
    strength: Any,
    inpaint_mask: str | None,
    boxes: Sequence[Sequence[float]],
    size: tuple[int, int],
    errors: dict[str, str],
) -> dict[str, Any]:
    """The request's arguments for the page's picture fields (none without a picture); problems
    go into ``errors`` under the field they are about. ``boxes``: the subjects' boxes that
    parse; ``size``: the output's (width, height)."""
    if not init_image:
        return {}
    arguments: dict[str, Any] = {"init_image": init_image, "strength": strength}
    if repaint == "mask":
        if not inpaint_mask:
            errors["inpaint_mask"] = (
                "Add a mask (white where the picture is repainted), or choose another Repaint."
            )
        arguments["inpaint_mask"] = inpaint_mask
    elif repaint == "boxes":
        mask = repaint_from_boxes(boxes, *size)
        if mask is None:
            errors["repaint"] = "Draw a subject's box first: only the boxes are repainted."
        arguments["inpaint_mask"] = mask
    elif repaint != "whole":
        errors["repaint"] = f"Choose what to repaint (got {repaint!r})."
    return arguments
