"""Draws the small example subject images shipped in examples/subjects (run once; kept for the
record). Simple flat drawings: the tiny preset has random weights, so any picture will do."""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).parent / "subjects"


def dog() -> Image.Image:
    im = Image.new("RGB", (96, 96), (250, 236, 210))
    d = ImageDraw.Draw(im)
    d.ellipse((18, 30, 78, 84), fill=(170, 110, 60))  # head
    d.ellipse((8, 22, 34, 62), fill=(110, 70, 40))  # ears
    d.ellipse((62, 22, 88, 62), fill=(110, 70, 40))
    d.ellipse((34, 48, 44, 58), fill=(20, 20, 20))  # eyes
    d.ellipse((52, 48, 62, 58), fill=(20, 20, 20))
    d.ellipse((41, 62, 55, 72), fill=(40, 25, 20))  # nose
    return im


def cat() -> Image.Image:
    im = Image.new("RGB", (96, 96), (215, 230, 250))
    d = ImageDraw.Draw(im)
    d.polygon([(20, 40), (28, 8), (44, 32)], fill=(90, 90, 100))  # ears
    d.polygon([(52, 32), (68, 8), (76, 40)], fill=(90, 90, 100))
    d.ellipse((16, 26, 80, 86), fill=(120, 120, 130))  # head
    d.ellipse((32, 46, 42, 58), fill=(120, 200, 80))  # eyes
    d.ellipse((54, 46, 64, 58), fill=(120, 200, 80))
    d.polygon([(44, 64), (52, 64), (48, 70)], fill=(230, 140, 150))  # nose
    return im


def hat() -> Image.Image:
    im = Image.new("RGB", (96, 96), (240, 240, 240))
    d = ImageDraw.Draw(im)
    d.rectangle((30, 20, 66, 64), fill=(30, 40, 120))
    d.rectangle((30, 52, 66, 60), fill=(200, 40, 40))
    d.ellipse((10, 58, 86, 76), fill=(30, 40, 120))
    return im


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in (("dog", dog), ("cat", cat), ("hat", hat)):
        make().save(OUT / f"{name}.png", optimize=True)
        print(OUT / f"{name}.png")
