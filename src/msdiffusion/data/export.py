"""``data export``: a dataset's shards → a JSONL manifest with image files (small scale).

For tools that want plain files, or to look at a few samples: every sample's members are written
as files and its record's paths rewritten to them::

    OUT/manifest.jsonl       the records (docs/training-data.md), paths relative to OUT
    OUT/images/<key>.jpg     targets
    OUT/refs/<key>_<k>.jpg   reference crops; <key>_<k>_mask.png their masks

One file per image: fine for thousands of samples, not for millions (train from the shards).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_open, atomic_write_bytes
from ..errors import InputError
from ..shards import iter_samples, shard_files

__all__ = ["export_manifest"]


def _place(out: Path, files: dict[str, bytes], member: str, folder: str, stem: str) -> str:
    """Write one member as ``folder/stem.<ext>`` under ``out``; return that relative path."""
    rel = f"{folder}/{stem}.{member.rsplit('.', 1)[-1]}"
    atomic_write_bytes(out / rel, files[member])
    return rel


def export_manifest(dataset: str | Path, out: str | Path, *, limit: int | None = None) -> Path:
    """Write ``out/manifest.jsonl`` and the files of the first ``limit`` samples (all: None)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError("--out", "exists and is not empty (will not overwrite)", str(out))
    if limit is not None and limit < 0:
        raise InputError("--limit", ">= 0", limit)
    _, shards = shard_files(dataset)
    manifest = out / "manifest.jsonl"
    with atomic_open(manifest) as handle:
        for n, sample in enumerate(iter_samples(shards)):
            if limit is not None and n >= limit:
                break
            record, key = sample.record, sample.key
            record["image"] = _place(out, sample.files, record["image"], "images", key)
            for k, s in enumerate(record["subjects"]):
                s["reference"] = _place(out, sample.files, s["reference"], "refs", f"{key}_{k}")
                if s.get("reference_mask"):
                    s["reference_mask"] = _place(
                        out, sample.files, s["reference_mask"], "refs", f"{key}_{k}_mask"
                    )
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return manifest
