"""Pictures of layouts: boxes, masks and phrases drawn on an image, next to reference thumbnails."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .charts import font

__all__ = ["PALETTE", "draw_layout", "draw_overlay", "image_grid"]

PALETTE = [
    (230, 57, 70),
    (29, 120, 230),
    (46, 170, 80),
    (240, 160, 20),
    (150, 70, 200),
    (20, 180, 190),
    (220, 90, 170),
    (120, 120, 120),
]


def draw_layout(
    image: Image.Image,
    boxes: Sequence[Any],
    phrases: Sequence[str],
    masks: Sequence[Any] | None = None,
) -> Image.Image:
    """A copy of ``image`` with each box outlined (normalised coordinates), each mask tinted, and
    the phrases written at the boxes' corners, one colour per subject."""
    out = image.convert("RGB").copy()
    w, h = out.size
    masks = list(masks) if masks is not None else [None] * len(phrases)
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        region = Image.fromarray((np.asarray(mask, dtype=bool) * 110).astype(np.uint8))
        tint = Image.new("RGB", out.size, PALETTE[i % len(PALETTE)])
        out = Image.composite(tint, out, region.resize(out.size, Image.Resampling.NEAREST))
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(w, h) / 128))
    label_font = font(max(10, min(w, h) // 20))
    for i, (box, phrase) in enumerate(zip(boxes, phrases)):
        color = PALETTE[i % len(PALETTE)]
        if box is not None:
            x0, y0, x1, y1 = box
            rect = (x0 * w, y0 * h, max(x0 * w, x1 * w - 1), max(y0 * h, y1 * h - 1))
            draw.rectangle(rect, outline=color, width=width)
            anchor = (rect[0] + width + 1, rect[1] + width)
        elif masks[i] is not None:
            rows, cols = np.nonzero(np.asarray(masks[i], dtype=bool))
            mh, mw = np.asarray(masks[i]).shape
            anchor = (cols.min() * w / mw + 2, rows.min() * h / mh + 2)
        else:
            anchor = (4, 4 + i * (label_font.size if hasattr(label_font, "size") else 12))
        text_box = draw.textbbox(anchor, phrase, font=label_font)
        draw.rectangle(text_box, fill=color)
        draw.text(anchor, phrase, fill=(255, 255, 255), font=label_font)
    return out


OVERLAY_MIN_SIDE = 256  # smaller outputs are enlarged (whole pixels) so labels stay legible


def draw_overlay(image: Image.Image, request: Any) -> Image.Image:
    """The output with its layout drawn, and each subject's reference thumbnail(s) beside it; an
    output under ``OVERLAY_MIN_SIDE`` pixels a side is drawn enlarged by a whole factor."""
    from .encoding import load_image, open_image
    from .layout import mask_to_array

    factor = -(-OVERLAY_MIN_SIDE // min(image.size))  # ceil
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)

    subjects = list(request.subjects)
    masks = [
        mask_to_array(open_image(s.mask) if isinstance(s.mask, str) else s.mask)
        if s.mask is not None
        else None
        for s in subjects
    ]
    left = draw_layout(image, [s.box for s in subjects], [s.phrase for s in subjects], masks)
    if not subjects:
        return left
    w, h = left.size
    rows = sum(len(s.images) for s in subjects)
    thumb = max(32, min(h // max(rows, 1), w // 2))
    canvas = Image.new("RGB", (w + thumb + 8, max(h, rows * thumb)), (255, 255, 255))
    canvas.paste(left, (0, 0))
    draw = ImageDraw.Draw(canvas)
    label_font = font(max(9, thumb // 8))
    y = 0
    for i, subject in enumerate(subjects):
        color = PALETTE[i % len(PALETTE)]
        label_h = draw.textbbox((0, 0), subject.phrase, font=label_font)[3] + 4
        for ref in subject.images:
            tile = load_image(ref)
            side = thumb - 6 - label_h  # below the phrase
            scale = min(side / tile.width, side / tile.height)
            size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
            tile = tile.resize(size, Image.NEAREST if scale > 1 else Image.BICUBIC)
            x = w + 8 + (thumb - 6 - tile.width) // 2
            canvas.paste(tile, (x, y + 3 + label_h))
            draw.rectangle((w + 5, y + 1, w + thumb + 6, y + thumb - 2), outline=color, width=3)
            draw.text((w + 9, y + 3), subject.phrase, fill=color, font=label_font)
            y += thumb
    return canvas


def image_grid(
    images: Sequence[Image.Image],
    columns: int,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile images (resized to the first one's size) into a grid."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), background)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(image.convert("RGB").resize((w, h)), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
