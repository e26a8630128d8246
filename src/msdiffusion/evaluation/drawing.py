"""Pictures for reports, drawn with Pillow only: bar charts and sample grids with boxes."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .metrics import box_to_pixels

__all__ = ["PALETTE", "bar_chart", "line_chart", "draw_boxes", "sample_grid"]

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (128, 128, 0)]
_BG, _INK, _GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def bar_chart(title: str, categories: Sequence[str], series: dict[str, Sequence[float | None]],
              path: str | Path, *, subtitle: str = "", value_format: str = "{:.3f}") -> None:
    """Horizontal grouped bars: one row per category, one bar per series (e.g. per run).

    ``series[name][i]`` is the value of ``categories[i]`` (None: no bar, "n/a").
    """
    names = list(series)
    bar_h, gap, label_w, plot_w, pad = 16, 10, 0, 520, 16
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f_small, f_title = _font(12), _font(16)
    label_w = max([_text_width(probe, c, f_small) for c in categories] + [40]) + 12
    legend_h = 20 if len(names) > 1 else 0
    row_h = bar_h * len(names) + gap
    top = pad + 26 + (18 if subtitle else 0) + legend_h
    height = top + row_h * len(categories) + 34
    width = pad * 2 + label_w + plot_w + 70
    im = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(im)
    d.text((pad, pad), title, fill=_INK, font=f_title)
    if subtitle:
        d.text((pad, pad + 24), subtitle, fill=(90, 90, 90), font=f_small)
    values = [v for s in series.values() for v in s if v is not None]
    lo = min(0.0, min(values, default=0.0))
    hi = max(values, default=1.0)
    hi = hi if hi > lo else lo + 1.0
    x0 = pad + label_w

    def x_of(v: float) -> int:
        return int(x0 + (v - lo) / (hi - lo) * plot_w)

    for t in range(6):  # vertical grid lines with tick labels
        v = lo + (hi - lo) * t / 5
        x = x_of(v)
        d.line([(x, top - 4), (x, height - 30)], fill=_GRID)
        d.text((x - 12, height - 26), value_format.format(v), fill=(90, 90, 90), font=f_small)
    if legend_h:
        lx = x0
        for k, name in enumerate(names):
            d.rectangle([lx, top - legend_h, lx + 10, top - legend_h + 10],
                        fill=PALETTE[k % len(PALETTE)])
            d.text((lx + 14, top - legend_h - 2), name, fill=_INK, font=f_small)
            lx += 24 + _text_width(d, name, f_small)
    for i, cat in enumerate(categories):
        y = top + i * row_h
        d.text((pad, y + (row_h - gap) // 2 - 7), cat, fill=_INK, font=f_small)
        for k, name in enumerate(names):
            v = series[name][i]
            by = y + k * bar_h
            if v is None:
                d.text((x0 + 4, by + 1), "n/a", fill=(150, 150, 150), font=f_small)
                continue
            d.rectangle([x_of(min(v, 0.0)), by + 2, max(x_of(max(v, 0.0)), x_of(min(v, 0.0)) + 1),
                         by + bar_h - 2], fill=PALETTE[k % len(PALETTE)])
            d.text((x_of(max(v, 0.0)) + 4, by + 1), value_format.format(v), fill=_INK,
                   font=f_small)
    d.line([(x_of(0.0), top - 4), (x_of(0.0), height - 30)], fill=_INK)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_png(im, path)


def line_chart(title: str, series: dict[str, Sequence[tuple[float, float]]], path: str | Path,
               *, x_label: str = "step", y_label: str = "", subtitle: str = "",
               size: tuple[int, int] = (640, 320)) -> None:
    """Lines of (x, y) points, one per series, with a labelled zero-based x axis and y ticks."""
    f_small, f_title = _font(12), _font(16)
    width, height = size
    pad, left, bottom = 16, 64, 40
    top = pad + 26 + (18 if subtitle else 0) + (20 if len(series) > 1 else 0)
    im = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(im)
    d.text((pad, pad), title, fill=_INK, font=f_title)
    if subtitle:
        d.text((pad, pad + 24), subtitle, fill=(90, 90, 90), font=f_small)
    points = [p for line in series.values() for p in line]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    x_lo, x_hi = min(0.0, min(xs)), max(xs) if max(xs) > min(0.0, min(xs)) else 1.0
    y_lo, y_hi = min(ys), max(ys)
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    y_lo, y_hi = y_lo - 0.05 * (y_hi - y_lo), y_hi + 0.05 * (y_hi - y_lo)
    plot_w, plot_h = width - left - pad, height - top - bottom

    def at(x: float, y: float) -> tuple[int, int]:
        return (int(left + (x - x_lo) / (x_hi - x_lo) * plot_w),
                int(top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h))

    for t in range(5):  # grid and ticks
        y = y_lo + (y_hi - y_lo) * t / 4
        _, py = at(x_lo, y)
        d.line([(left, py), (left + plot_w, py)], fill=_GRID)
        d.text((pad, py - 7), f"{y:.3g}", fill=(90, 90, 90), font=f_small)
        x = x_lo + (x_hi - x_lo) * t / 4
        px, _ = at(x, y_lo)
        d.text((px - 10, top + plot_h + 4), f"{x:.0f}", fill=(90, 90, 90), font=f_small)
    d.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill=_INK)
    d.text((left + plot_w // 2 - 10, height - 18), x_label, fill=_INK, font=f_small)
    if y_label:
        d.text((left + 4, top - 16), y_label, fill=_INK, font=f_small)
    lx = left
    for k, (name, line) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        if len(line) > 1:
            d.line([at(x, y) for x, y in line], fill=color, width=2)
        if len(series) > 1:
            d.rectangle([lx, top - 34, lx + 10, top - 24], fill=color)
            d.text((lx + 14, top - 36), name, fill=_INK, font=f_small)
            lx += 28 + _text_width(d, name, f_small)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_png(im, path)


def _save_png(im: Image.Image, path: str | Path) -> None:
    import io

    from .runs import atomic_write_bytes

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def draw_boxes(image: Image.Image, subjects: Sequence[dict[str, Any]]) -> Image.Image:
    """A copy of ``image`` with each subject's requested box (thick, labelled with the phrase)
    and detected box (thin, with its IoU) in the subject's colour."""
    im = image.convert("RGB").copy()
    d = ImageDraw.Draw(im)
    font = _font(max(10, im.width // 24))
    for n, sub in enumerate(subjects):
        color = PALETTE[n % len(PALETTE)]
        x0, y0, x1, y1 = box_to_pixels(sub["box"], im.width, im.height)
        d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=max(2, im.width // 128))
        label = sub.get("phrase", "")
        if label:  # white text on the subject's colour: readable on any image
            bx0, by0, bx1, by1 = d.textbbox((x0 + 3, y0 + 2), label, font=font)
            d.rectangle([bx0 - 2, by0 - 1, bx1 + 2, by1 + 1], fill=color)
            d.text((x0 + 3, y0 + 2), label, fill=(255, 255, 255), font=font)
        if sub.get("det_box"):
            x0, y0, x1, y1 = box_to_pixels(sub["det_box"], im.width, im.height)
            d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=1)
            if sub.get("iou") is not None:
                d.text((x0 + 3, y1 - font.size - 4 if hasattr(font, "size") else y1 - 14),
                       f"IoU {sub['iou']:.2f}", fill=color, font=font)
    return im


def sample_grid(cells: Sequence[dict[str, Any]], path: str | Path, *, cell: int = 256,
                columns: int = 4, thumb: int = 56) -> None:
    """A grid of outputs with boxes drawn, their references and captions.

    Each cell: ``{"image": PIL, "subjects": [...], "references": [PIL], "caption": str}``.
    """
    f = _font(12)
    caption_lines = 3
    cell_h = cell + thumb + 8 + caption_lines * 15 + 8
    rows = max(1, -(-len(cells) // columns))
    cols = min(columns, max(1, len(cells)))
    grid = Image.new("RGB", (cols * (cell + 8) + 8, rows * cell_h + 8), _BG)
    d = ImageDraw.Draw(grid)
    for i, c in enumerate(cells):
        x = 8 + (i % columns) * (cell + 8)
        y = 8 + (i // columns) * cell_h
        image = c["image"].convert("RGB")
        fit = cell / max(image.size)  # up- or down-scale to the cell, then draw crisp boxes
        image = image.resize((max(1, round(image.width * fit)), max(1, round(image.height * fit))),
                             Image.Resampling.LANCZOS if fit < 1 else Image.Resampling.NEAREST)
        out = draw_boxes(image, c["subjects"])
        grid.paste(out, (x + (cell - out.width) // 2, y + (cell - out.height) // 2))
        for k, ref in enumerate(c.get("references", [])[: cell // (thumb + 4)]):
            t = ref.convert("RGB").copy()
            t.thumbnail((thumb, thumb))
            tx = x + k * (thumb + 4)
            grid.paste(t, (tx, y + cell + 4))
            d.rectangle([tx - 1, y + cell + 3, tx + t.width, y + cell + 4 + t.height],
                        outline=PALETTE[k % len(PALETTE)], width=2)
        lines = textwrap.wrap(c.get("caption", ""), width=max(12, cell // 7))[:caption_lines]
        for j, line in enumerate(lines):
            d.text((x, y + cell + thumb + 8 + j * 15), line, fill=_INK, font=f)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_png(grid, path)
