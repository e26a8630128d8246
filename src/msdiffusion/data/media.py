"""Reading input images robustly: odd modes converted, huge or broken files turned into a reason.

A bad input never raises past this module except as ``BadInput(reason)``, which the build counts
(``file:<reason>``) and moves on from. Conversions are counted too, so the report says how many
CMYK, palette, 16-bit or transparent images were fixed on the way in.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .stats import Stats

__all__ = ["BadInput", "load_rgb", "to_rgb", "limit_side", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class BadInput(Exception):
    """An input file the build skips; ``reason`` is a short key (``empty``, ``unreadable``, ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def load_rgb(path: str | Path, *, max_side: int, max_pixels: int, stats: Stats) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB image at most ``max_side`` pixels on its long side.

    Raises ``BadInput`` for empty, unreadable, truncated or too large (``> max_pixels``) files.
    EXIF rotation is applied; alpha is composited over white.
    """
    path = Path(path)
    if os.path.getsize(path) == 0:
        raise BadInput("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > max_pixels:
                raise BadInput("too_large", f"{width}x{height}")
            if image.format == "JPEG" and max(width, height) > 2 * max_side:
                image.draft("RGB", (max_side, max_side))  # decode at a reduced scale: fast
            image.load()
    except BadInput:
        raise
    except Image.DecompressionBombError as err:
        raise BadInput("too_large", str(err)) from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as err:
        truncated = "truncated" in str(err).lower()
        raise BadInput("truncated" if truncated else "unreadable", str(err)) from None
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
            image = ImageOps.exif_transpose(image)
            stats.convert("exif_rotated")
    except Exception:  # a broken EXIF block is not worth dropping the image for
        pass
    return limit_side(to_rgb(image, stats), max_side, stats)


def to_rgb(image: Image.Image, stats: Stats) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; counts what it converted (``converted[<kind>]``)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("P", "PA"):
        stats.convert("palette")
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "La", "RGBa", "RGBX"):
        if mode != "RGBX":
            stats.convert("alpha")
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16-bit (I;16*), 32-bit int (I) or float (F): rescale the value range to 8 bits.
        stats.convert("16bit" if mode.startswith("I") else "float")
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else max(values.max(), 1.0)
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    stats.convert({"CMYK": "cmyk", "L": "grey", "1": "bilevel"}.get(mode, mode.lower()))
    return image.convert("RGB")


def limit_side(image: Image.Image, max_side: int, stats: Stats) -> Image.Image:
    """Downscale (Lanczos) so the long side is at most ``max_side``; counts ``downscaled``."""
    if max(image.size) <= max_side:
        return image
    stats.convert("downscaled")
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
