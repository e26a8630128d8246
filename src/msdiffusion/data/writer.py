"""Writing a dataset folder: images, reference crops and masks, per-file parts, the manifest.

Layout of ``DATASET/``::

    manifest.jsonl             one record per sample (the training manifest format)
    images/<key>/<n>.jpg       target images (RGB, at most max_image_side)
    refs/<key>/<n>_<k>.jpg     reference crops; <n>_<k>_mask.png: their masks (L, 0/255)
    parts/<key>.json           one per input file: its records and counts (the resume state)
    build.json                 the config and its fingerprint
    report.json, report.md, report_grid.png

Every file is written under a temporary name and renamed into place, and a file's part is written
last, after all of its images: a part that exists is complete, and a crash loses at most the file
in progress.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..atomic import atomic_save_image, atomic_write_text
from .config import BuildConfig
from .samples import BuiltSample
from .stats import Stats

__all__ = ["DatasetWriter", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.jsonl"


def _box(box: tuple[float, ...] | None) -> list[float] | None:
    return None if box is None else [round(float(v), 6) for v in box]


class DatasetWriter:
    """Writes one dataset folder (see the module docstring)."""

    def __init__(self, root: Path, cfg: BuildConfig):
        self.root, self.cfg = root, cfg
        self.ext = "." + cfg.image_format
        self.params: dict[str, Any] = (
            {"quality": cfg.jpeg_quality} if cfg.image_format == "jpg" else {}
        )

    def part_path(self, key: str) -> Path:
        return self.root / "parts" / f"{key}.json"

    def has_part(self, key: str) -> bool:
        return self.part_path(key).is_file()

    def read_part(self, key: str) -> dict[str, Any]:
        return json.loads(self.part_path(key).read_text())

    def begin_file(self, key: str) -> None:
        """Remove what an interrupted earlier attempt at this file left behind."""
        for folder in ("images", "refs"):
            shutil.rmtree(self.root / folder / key, ignore_errors=True)

    def write_samples(self, key: str, samples: list[BuiltSample]) -> list[dict[str, Any]]:
        """Save the images of ``samples`` (all from input ``key``); return their records."""
        records = []
        for sample in samples:
            t = sample.target
            stem = f"{t.index:04d}"
            image_rel = f"images/{key}/{stem}{self.ext}"
            atomic_save_image(t.image, self.root / image_rel, **self.params)
            subjects, subject_meta = [], []
            for k, s in enumerate(sample.subjects):
                ref_rel = f"refs/{key}/{stem}_{k}{self.ext}"
                atomic_save_image(s.reference, self.root / ref_rel, **self.params)
                mask_rel = None
                if s.reference_mask is not None:
                    mask_rel = f"refs/{key}/{stem}_{k}_mask.png"
                    atomic_save_image(s.reference_mask.convert("L"), self.root / mask_rel)
                subjects.append(
                    {
                        "phrase": s.phrase,
                        "box": _box(s.box),
                        "reference": ref_rel,
                        "reference_box": _box(s.reference_box),
                        "reference_mask": mask_rel,
                        "augmented": s.augmented,
                    }
                )
                subject_meta.append(s.meta)
            records.append(
                {
                    "id": f"{key}-{stem}",
                    "image": image_rel,
                    "caption": sample.caption,
                    "subjects": subjects,
                    "meta": {
                        **t.meta,
                        "caption_source": t.caption_source,
                        "subjects": subject_meta,
                    },
                }
            )
        return records

    def write_part(
        self, key: str, rel: str, records: list[dict[str, Any]], stats: Stats, fingerprint: str
    ) -> None:
        """Mark input ``rel`` done: its records and counts, written atomically, last."""
        part = {"input": rel, "config": fingerprint, "records": records, "stats": stats.to_dict()}
        atomic_write_text(self.part_path(key), json.dumps(part))
