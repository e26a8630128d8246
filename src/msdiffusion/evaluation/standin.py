"""Stand-in benchmark data: the real folder layouts filled with placeholder images.

For trying the harness (and for tests) where the real data is not available: ``msbench/`` gets
one small picture per subject of the packaged spec (``living/cat1.jpg`` left out, as in the
project's shared copy, unless ``missing=()``); ``dreambench/`` gets 30 subjects with 4–6 pictures
each and a ``prompts_and_classes.txt`` in the published format (placeholder prompts, the same
counts). The enumeration is exactly that of the real benchmarks; the numbers scored on it mean
nothing. Get the real data as docs/evaluation.md explains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..benchmarks import DREAMBENCH_PROMPTS, DREAMBENCH_SUBJECTS, load_msbench_spec

__all__ = ["write_standin"]


def _picture(name: str, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A deterministic placeholder: a coloured ellipse on a tinted background."""
    h = hashlib.sha256(name.encode()).digest()
    im = Image.new("RGB", size, (h[0] // 2 + 100, h[1] // 2 + 100, h[2] // 2 + 100))
    d = ImageDraw.Draw(im)
    w, hh = size
    d.ellipse([w * 0.2, hh * 0.15, w * 0.8, hh * 0.85], fill=(h[3], h[4], h[5]))
    return im


def _save(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def _write_msbench(root: Path, missing: Sequence[str]) -> None:
    spec, _ = load_msbench_spec()
    for name, rel in spec["files"].items():
        if rel not in missing:
            _save(_picture(name), root / rel)


def _write_dreambench(root: Path) -> None:
    live = ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    objects = [f"object{i:02d}" for i in range(DREAMBENCH_SUBJECTS - len(live))]
    classes = {n: ("cat" if n.startswith("cat") else "dog") for n in live}
    classes.update({n: f"thing {i % 7}" for i, n in enumerate(objects)})
    for i, name in enumerate(sorted(classes)):
        for k in range(4 + i % 3):
            _save(_picture(f"{name}/{k}"), root / name / f"{k:02d}.jpg")
    prompts = [
        f"'a {{0}} {{1}} in stand-in scene {p}'.format(unique_token, class_token),"
        for p in range(DREAMBENCH_PROMPTS)
    ]
    text = ["Classes", "", "subject_name,class"]
    text += [f"{n},{c}" for n, c in sorted(classes.items())]
    text += [
        "",
        "Prompts",
        "",
        "Object Prompts",
        "",
        "prompt_list = [",
        *prompts,
        "]",
        "",
        "Live Subject Prompts",
        "",
        "prompt_list = [",
        *(p.replace("scene", "live scene") for p in prompts),
        "]",
        "",
    ]
    (root / "prompts_and_classes.txt").write_text("\n".join(text), encoding="utf-8")


def write_standin(
    root: str | Path,
    *,
    benchmarks: Sequence[str] = ("msbench", "dreambench", "toy"),
    missing: Sequence[str] = ("living/cat1.jpg",),
) -> Path:
    """Write stand-in data under ``root`` (``root/msbench``, ``root/dreambench``) and the toy
    benchmark (``root/toy``: the real thing — the toy world is generated); returns root."""
    root = Path(root)
    if "toy" in benchmarks:
        from ..toyworld.bench import write_toy_benchmark

        write_toy_benchmark(root)
    if "msbench" in benchmarks:
        _write_msbench(root / "msbench", missing)
    if "dreambench" in benchmarks:
        _write_dreambench(root / "dreambench")
    return root
