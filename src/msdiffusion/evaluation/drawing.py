"""Pictures for reports, drawn with Pillow only: sample grids with their boxes (the charts are
``msdiffusion.charts``)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..atomic import atomic_save_image
from ..charts import BACKGROUND, INK, PALETTE, font
from ..geometry import box_to_pixels

__all__ = ["draw_boxes", "sample_grid"]


def draw_boxes(image: Image.Image, subjects: Sequence[dict[str, Any]]) -> Image.Image:
    """A copy of ``image`` with each subject's requested box (thick, labelled with the phrase)
    and detected box (thin, with its IoU — or "missing" below the detection threshold) in the
    subject's colour."""
    im = image.convert("RGB").copy()
    d = ImageDraw.Draw(im)
    label_font = font(max(10, im.width // 24))
    for n, sub in enumerate(subjects):
        color = PALETTE[n % len(PALETTE)]
        x0, y0, x1, y1 = box_to_pixels(sub["box"], im.width, im.height)
        d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=max(2, im.width // 128))
        label = sub.get("phrase", "")
        if label:  # white text on the subject's colour: readable on any image
            bx0, by0, bx1, by1 = d.textbbox((x0 + 3, y0 + 2), label, font=label_font)
            d.rectangle([bx0 - 2, by0 - 1, bx1 + 2, by1 + 1], fill=color)
            d.text((x0 + 3, y0 + 2), label, fill=(255, 255, 255), font=label_font)
        if sub.get("det_box"):
            x0, y0, x1, y1 = box_to_pixels(sub["det_box"], im.width, im.height)
            d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=1)
            note = (
                "missing"
                if sub.get("detected") is False
                else f"IoU {sub['iou']:.2f}"
                if sub.get("iou") is not None
                else None
            )
            if note:
                d.text(
                    (x0 + 3, y1 - label_font.size - 4 if hasattr(label_font, "size") else y1 - 14),
                    note,
                    fill=color,
                    font=label_font,
                )
    return im


def sample_grid(
    cells: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    cell: int = 256,
    columns: int = 4,
    thumb: int = 56,
) -> None:
    """A grid of outputs with boxes drawn, their references and captions.

    Each cell: ``{"image": PIL, "subjects": [...], "references": [PIL], "caption": str}``.
    """
    f = font(12)
    caption_lines = 3
    cell_h = cell + thumb + 8 + caption_lines * 15 + 8
    rows = max(1, -(-len(cells) // columns))
    cols = min(columns, max(1, len(cells)))
    grid = Image.new("RGB", (cols * (cell + 8) + 8, rows * cell_h + 8), BACKGROUND)
    d = ImageDraw.Draw(grid)
    for i, c in enumerate(cells):
        x = 8 + (i % columns) * (cell + 8)
        y = 8 + (i // columns) * cell_h
        image = c["image"].convert("RGB")
        fit = cell / max(image.size)  # up- or down-scale to the cell, then draw crisp boxes
        image = image.resize(
            (max(1, round(image.width * fit)), max(1, round(image.height * fit))),
            Image.Resampling.LANCZOS if fit < 1 else Image.Resampling.NEAREST,
        )
        out = draw_boxes(image, c["subjects"])
        grid.paste(out, (x + (cell - out.width) // 2, y + (cell - out.height) // 2))
        for k, ref in enumerate(c.get("references", [])[: cell // (thumb + 4)]):
            t = ref.convert("RGB").copy()
            t.thumbnail((thumb, thumb))
            tx = x + k * (thumb + 4)
            grid.paste(t, (tx, y + cell + 4))
            d.rectangle(
                [tx - 1, y + cell + 3, tx + t.width, y + cell + 4 + t.height],
                outline=PALETTE[k % len(PALETTE)],
                width=2,
            )
        lines = textwrap.wrap(c.get("caption", ""), width=max(12, cell // 7))[:caption_lines]
        for j, line in enumerate(lines):
            d.text((x, y + cell + thumb + 8 + j * 15), line, fill=INK, font=f)
    atomic_save_image(grid, path)
