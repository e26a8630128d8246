"""Charts drawn with Pillow only — bars and lines for reports and learning curves — and the
palette and default font they and the report pictures share.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_save_image

__all__ = ["PALETTE", "BACKGROUND", "INK", "font", "text_width", "bar_chart", "line_chart"]

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (128, 128, 0),
]
BACKGROUND, INK, _GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (its fixed bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (breaking at spaces; "\\n" kept)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and text_width(draw, trial, font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: dict[str, Sequence[float | None]],
    path: str | Path,
    *,
    subtitle: str = "",
    value_format: str = "{:.3f}",
    intervals: dict[str, Sequence[tuple[float, float] | None]] | None = None,
    references: dict[str, float] | None = None,
) -> None:
    """Horizontal grouped bars: one row per category, one bar per series (e.g. per run).

    ``series[name][i]`` is the value of ``categories[i]`` (None: no bar, "n/a");
    ``intervals[name][i]`` an optional (low, high) drawn as a whisker; ``references[label]`` a
    value of the first category (the overall one) drawn as a dashed vertical line across its row
    (e.g. the number a paper reports) and named in the legend. Every bar is labelled with its
    value, and the axis starts at a labelled zero (or below it, for negative values). A long
    subtitle wraps.
    """
    intervals, references = intervals or {}, references or {}
    names = list(series)
    bar_h, gap, label_w, plot_w, pad = 16, 10, 0, 520, 16
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f_small, f_title = font(12), font(16)
    label_w = max([text_width(probe, c, f_small) for c in categories] + [40]) + 12
    width = pad * 2 + label_w + plot_w + 70
    sub_lines = _wrap(probe, subtitle, f_small, width - 2 * pad) if subtitle else []
    legend_h = 20 if len(names) > 1 or references else 0
    row_h = bar_h * len(names) + gap
    top = pad + 26 + 16 * len(sub_lines) + legend_h
    height = top + row_h * len(categories) + 34
    im = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(im)
    d.text((pad, pad), title, fill=INK, font=f_title)
    for k, line in enumerate(sub_lines):
        d.text((pad, pad + 24 + 16 * k), line, fill=(90, 90, 90), font=f_small)
    values = [v for s in series.values() for v in s if v is not None]
    values += [e for ivs in intervals.values() for iv in ivs if iv for e in iv]
    values += list(references.values())
    lo = min(0.0, min(values, default=0.0))
    hi = max(values, default=1.0)
    hi = hi if hi > lo else lo + 1.0
    x0 = pad + label_w

    def x_of(v: float) -> int:
        return int(x0 + (v - lo) / (hi - lo) * plot_w)

    for t in range(6):  # vertical grid lines with tick labels; zero gets its own below
        v = lo + (hi - lo) * t / 5
        x = x_of(v)
        d.line([(x, top - 4), (x, height - 30)], fill=_GRID)
        if abs(x - x_of(0.0)) >= 30:
            d.text((x - 12, height - 26), value_format.format(v), fill=(90, 90, 90), font=f_small)
    if legend_h:
        lx = x0
        for k, name in enumerate(names):
            d.rectangle(
                [lx, top - legend_h, lx + 10, top - legend_h + 10], fill=PALETTE[k % len(PALETTE)]
            )
            d.text((lx + 14, top - legend_h - 2), name, fill=INK, font=f_small)
            lx += 24 + text_width(d, name, f_small)
        for label, value in references.items():
            d.line([(lx, top - legend_h + 5), (lx + 10, top - legend_h + 5)], fill=INK, width=2)
            text = f"{label}: {value_format.format(value)}"
            d.text((lx + 14, top - legend_h - 2), text, fill=INK, font=f_small)
            lx += 24 + text_width(d, text, f_small)
    for value in references.values():  # dashed: a number from elsewhere, not a bar of ours
        x, bottom = x_of(value), top + row_h - gap // 2
        for y in range(top - 4, bottom, 6):
            d.line([(x, y), (x, min(y + 3, bottom))], fill=INK, width=2)
    for i, cat in enumerate(categories):
        y = top + i * row_h
        d.text((pad, y + (row_h - gap) // 2 - 7), cat, fill=INK, font=f_small)
        for k, name in enumerate(names):
            v = series[name][i]
            by = y + k * bar_h
            if v is None:
                d.text((x0 + 4, by + 1), "n/a", fill=(150, 150, 150), font=f_small)
                continue
            d.rectangle(
                [
                    x_of(min(v, 0.0)),
                    by + 2,
                    max(x_of(max(v, 0.0)), x_of(min(v, 0.0)) + 1),
                    by + bar_h - 2,
                ],
                fill=PALETTE[k % len(PALETTE)],
            )
            iv = (intervals.get(name) or [None] * len(categories))[i]
            end = x_of(max(v, 0.0))
            if iv is not None:  # whisker at the bar's middle, capped
                mid = by + bar_h // 2
                d.line([(x_of(iv[0]), mid), (x_of(iv[1]), mid)], fill=INK, width=1)
                for e in iv:
                    d.line([(x_of(e), mid - 3), (x_of(e), mid + 3)], fill=INK, width=1)
                end = max(end, x_of(iv[1]))
            d.text((end + 4, by + 1), value_format.format(v), fill=INK, font=f_small)
    zero = x_of(0.0)
    d.line([(zero, top - 4), (zero, height - 30)], fill=INK)
    d.text((zero - 3, height - 26), "0", fill=INK, font=f_small)
    atomic_save_image(im, path)


def line_chart(
    title: str,
    series: dict[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    x_label: str = "step",
    y_label: str = "",
    subtitle: str = "",
    size: tuple[int, int] = (640, 320),
) -> None:
    """Lines of (x, y) points, one per series, with a labelled zero-based x axis and y ticks."""
    f_small, f_title = font(12), font(16)
    width, height = size
    pad, left, bottom = 16, 64, 40
    top = pad + 26 + (18 if subtitle else 0) + (20 if len(series) > 1 else 0)
    im = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(im)
    d.text((pad, pad), title, fill=INK, font=f_title)
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
        return (
            int(left + (x - x_lo) / (x_hi - x_lo) * plot_w),
            int(top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h),
        )

    for t in range(5):  # grid and ticks
        y = y_lo + (y_hi - y_lo) * t / 4
        _, py = at(x_lo, y)
        d.line([(left, py), (left + plot_w, py)], fill=_GRID)
        d.text((pad, py - 7), f"{y:.3g}", fill=(90, 90, 90), font=f_small)
        x = x_lo + (x_hi - x_lo) * t / 4
        px, _ = at(x, y_lo)
        d.text((px - 10, top + plot_h + 4), f"{x:.0f}", fill=(90, 90, 90), font=f_small)
    d.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill=INK)
    d.text((left + plot_w // 2 - 10, height - 18), x_label, fill=INK, font=f_small)
    if y_label:
        d.text((left + 4, top - 16), y_label, fill=INK, font=f_small)
    lx = left
    for k, (name, line) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        if len(line) > 1:
            d.line([at(x, y) for x, y in line], fill=color, width=2)
        if len(series) > 1:
            d.rectangle([lx, top - 34, lx + 10, top - 24], fill=color)
            d.text((lx + 14, top - 36), name, fill=INK, font=f_small)
            lx += 28 + text_width(d, name, f_small)
    atomic_save_image(im, path)
