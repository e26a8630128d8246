"""The inpainting demo's figure (``make edit-demo``): the picture, what is repainted (the mask's
black part dimmed, the subject's box drawn), and the results — enlarged, labelled.

    python examples/toy/edit_demo_figure.py --picture P.png --mask M.png --results RUN --out F.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from msdiffusion.charts import font
from msdiffusion.visualize import PALETTE

CELL = 192  # pixels per picture in the figure
PAD = 8


def _big(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)


def repaint_view(picture: Image.Image, mask: Image.Image, boxes: list[list[float]]) -> Image.Image:
    """The picture with what stays (the mask's black part) dimmed and each subject's box drawn."""
    pixels = np.asarray(_big(picture), dtype=np.float32)
    inside = np.asarray(mask.convert("L").resize((CELL, CELL)), dtype=np.float32)[..., None] >= 128
    shown = np.where(inside, pixels, pixels * 0.35 + 255 * 0.15).astype(np.uint8)  # (H, W, 3)
    view = Image.fromarray(shown)
    draw = ImageDraw.Draw(view)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        draw.rectangle((x0 * CELL, y0 * CELL, x1 * CELL, y1 * CELL), outline=PALETTE[k], width=3)
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picture", required=True, help="the picture the demo starts from")
    parser.add_argument("--mask", required=True, help="the repaint mask (white = repainted)")
    parser.add_argument("--results", required=True, help="the inpainting run folder")
    parser.add_argument("--out", required=True, help="the figure to write (PNG)")
    args = parser.parse_args()
    results = Path(args.results)
    sidecars = sorted(results.glob("image_*.json"))
    recipe = json.loads(sidecars[0].read_text())["request"]
    boxes = [s["box"] for s in recipe["subjects"]]
    picture = Image.open(args.picture)
    references = [results / s["images"][0] for s in recipe["subjects"]]  # absolute stays absolute
    cells = [_big(picture), *(_big(Image.open(r)) for r in references)]
    cells.append(repaint_view(picture, Image.open(args.mask), boxes))
    cells += [_big(Image.open(results / json.loads(p.read_text())["image"])) for p in sidecars]
    phrases = ", ".join(s["phrase"] for s in recipe["subjects"])
    labels = ["the picture", *(f"subject: {s['phrase']}" for s in recipe["subjects"])]
    labels.append(f"repainted (box: {phrases})")
    labels += [f"seed {json.loads(p.read_text())['seed']}" for p in sidecars]
    title_font = font(16)
    top = 28
    figure = Image.new("RGB", (PAD + len(cells) * (CELL + PAD), top + CELL + PAD), "white")
    draw = ImageDraw.Draw(figure)
    for i, (cell, label) in enumerate(zip(cells, labels, strict=True)):
        x = PAD + i * (CELL + PAD)
        figure.paste(cell, (x, top))
        draw.text((x + 2, 6), label, fill=(30, 30, 30), font=title_font)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
