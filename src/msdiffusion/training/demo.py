"""A small, self-made training set for the demo and the tests.

Each target image pastes one or two subject pictures at random, non-overlapping boxes on a plain
background; the subject pictures themselves are the references (one of them through a mask, one
through a reference box, to exercise both paths). With ``subjects_dir`` (e.g. the repository's
``examples/subjects``) its ``*.png`` are the subjects; otherwise simple shapes are drawn.
``demo_shards`` writes the same records as a shard dataset (docs/training-data.md, "Shards").
"""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

from ..atomic import atomic_path, atomic_write_json
from ..manifest import scan_manifest, write_manifest
from ..shards import (
    FORMAT,
    INDEX_NAME,
    RECORD,
    mask_member,
    reference_member,
    shard_path,
    target_member,
)

__all__ = ["build_demo_manifest", "demo_shards", "draw_shape_subjects"]

COLORS = {"ball": (220, 60, 50), "box": (60, 120, 220), "star": (240, 200, 40)}


def draw_shape_subjects(size: int = 64) -> dict[str, Image.Image]:
    """Three flat drawings named by what they show (ball, box, star)."""
    out = {}
    for name, color in COLORS.items():
        im = Image.new("RGB", (size, size), (245, 245, 240))
        d = ImageDraw.Draw(im)
        m = size // 8
        if name == "ball":
            d.ellipse((m, m, size - m, size - m), fill=color)
        elif name == "box":
            d.rectangle((m, 2 * m, size - m, size - m), fill=color)
        else:  # a five-pointed star: outer and inner radius alternate
            c, r = size / 2, size / 2 - m
            pts = []
            for i in range(10):
                radius = r if i % 2 == 0 else r / 2.5
                angle = -math.pi / 2 + i * math.pi / 5
                pts.append((c + radius * math.cos(angle), c + radius * math.sin(angle)))
            d.polygon(pts, fill=color)
        out[name] = im
    return out


def build_demo_manifest(
    out_dir: str | Path,
    subjects_dir: str | Path | None = None,
    *,
    num_records: int = 12,
    size: int = 96,
    seed: int = 0,
) -> Path:
    """Write images, references, one mask and ``train.jsonl`` under ``out_dir``; returns the
    manifest path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refs").mkdir(parents=True, exist_ok=True)
    subjects: dict[str, Image.Image] = {}
    if subjects_dir is not None:
        for path in sorted(Path(subjects_dir).glob("*.png")):
            with Image.open(path) as im:
                subjects[path.stem] = im.convert("RGB")
    if len(subjects) < 2:
        subjects = draw_shape_subjects()
    names = sorted(subjects)
    for name, image in subjects.items():
        image.save(out / "refs" / f"{name}.png")
    # A mask for the first subject: an ellipse inside the picture (L mode, the reference's size).
    first = subjects[names[0]]
    mask = Image.new("L", first.size, 0)
    w, h = first.size
    ImageDraw.Draw(mask).ellipse((w // 8, h // 8, w - w // 8, h - h // 8), fill=255)
    mask.save(out / "refs" / f"{names[0]}_mask.png")

    rng = random.Random(seed)
    records = []
    for i in range(num_records):
        count = 1 + (i % 2)
        chosen = rng.sample(names, count)
        background = tuple(rng.randint(150, 250) for _ in range(3))
        target = Image.new("RGB", (size, size), background)
        entries = []
        for k, name in enumerate(chosen):
            # left or right half, random size and position inside it
            side = rng.randint(size // 4, size // 2 - 2)
            half = k if count == 2 else rng.randint(0, 1)
            x0 = rng.randint(0, size // 2 - side) + half * (size // 2)
            y0 = rng.randint(0, size - side)
            target.paste(subjects[name].resize((side, side)), (x0, y0))
            entry = {
                "phrase": name,
                "box": [x0 / size, y0 / size, (x0 + side) / size, (y0 + side) / size],
                "reference": f"refs/{name}.png",
                "reference_box": None,
                "reference_mask": None,
                "augmented": False,
            }
            if name == names[0] and i % 3 == 0:
                entry["reference_mask"] = f"refs/{names[0]}_mask.png"
            elif i % 3 == 1:
                entry["reference_box"] = [0.05, 0.05, 0.95, 0.95]
            entries.append(entry)
        target.save(out / "images" / f"{i:04d}.png")
        caption = (
            f"a {chosen[0]} and a {chosen[1]} on a plain background"
            if count == 2
            else f"a photo of a {chosen[0]}"
        )
        records.append(
            {
                "id": f"demo-{i:04d}",
                "image": f"images/{i:04d}.png",
                "caption": caption,
                "subjects": entries,
                "meta": {"source": "demo"},
            }
        )
    return write_manifest(records, out / "train.jsonl")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uname, info.gname = len(data), 0, "msdiffusion", "msdiffusion"
    tar.addfile(info, io.BytesIO(data))


def demo_shards(manifest: str | Path, out_dir: str | Path, samples_per_shard: int = 4) -> Path:
    """A manifest's records as a shard dataset under ``out_dir`` (``index.json`` +
    ``shards/shard-NNNNNN.tar``; each sample's record names its own members); returns
    ``out_dir``."""
    scan = scan_manifest(manifest)
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    entries = []
    for start in range(0, len(scan.records), samples_per_shard):
        chunk = scan.records[start : start + samples_per_shard]
        rel = shard_path(len(entries))
        with (
            atomic_path(out / rel) as tmp,
            tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for record in chunk:
                key = record.id.replace(".", "_")
                obj = record.to_json()
                files = {target_member("png"): record.image}
                for k, subject in enumerate(obj["subjects"]):
                    ref, mask = reference_member(k, "png"), mask_member(k)
                    files[ref], subject["reference"] = subject["reference"], ref
                    if subject["reference_mask"] is not None:
                        files[mask], subject["reference_mask"] = subject["reference_mask"], mask
                obj["image"] = target_member("png")
                _member(tar, f"{key}.{RECORD}", json.dumps(obj).encode())
                for member, path in files.items():
                    _member(tar, f"{key}.{member}", (scan.root / path).read_bytes())
        entries.append({"path": rel, "samples": len(chunk)})
    index = {
        "format": FORMAT,
        "samples": len(scan.records),
        "config_fingerprint": "demo",
        "shards": entries,
    }
    atomic_write_json(out / INDEX_NAME, index)
    return out
