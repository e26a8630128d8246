"""The toy world's training set, written in the project's training-manifest format, so that
``msdiffusion data check`` and ``msdiffusion train`` take it unchanged.

Each record is a training scene (target image + caption) whose subjects each have a reference: a
whole other frame of the same subject (``refs/``) with the subject's box in it
(``reference_box``) — the trainer crops it, as it does with video frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..manifest import write_manifest
from .world import render, sample_reference, sample_scene

__all__ = ["write_training_set", "training_record"]

_CHUNK = 200


def training_record(out: Path, seed: int, index: int) -> dict[str, Any]:
    """Render training scene ``index`` and its references under ``out``; return its record."""
    scene = sample_scene(seed, "train", index)
    image, _ = render(scene)
    name = f"{index:06d}"
    image.save(out / "images" / f"{name}.png")
    subjects = []
    for k, placed in enumerate(scene.subjects):
        ref = sample_reference(placed, seed, index * 4 + k, avoid_background=scene.background)
        ref.image.save(out / "refs" / f"{name}_{k}.png")
        subjects.append(
            {
                "phrase": placed.cls,
                "box": list(placed.box),
                "reference": f"refs/{name}_{k}.png",
                "reference_box": list(ref.box),
                "reference_mask": None,
                "augmented": False,
            }
        )
    meta = {
        "world_seed": seed,
        "background": scene.background,
        "identities": [
            {"colors": list(p.identity.colors), "pattern": p.identity.pattern}
            for p in scene.subjects
        ],
    }
    return {
        "id": f"toy-{name}",
        "image": f"images/{name}.png",
        "caption": scene.caption,
        "subjects": subjects,
        "meta": meta,
    }


def _chunk(args: tuple[str, int, int, int]) -> list[dict[str, Any]]:
    out, seed, start, stop = args
    return [training_record(Path(out), seed, i) for i in range(start, stop)]


def write_training_set(
    out_dir: str | os.PathLike[str],
    count: int,
    *,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Write ``count`` records (images, references, ``train.jsonl``) under ``out_dir``; the
    manifest is written last, atomically, so a manifest means a complete set. Returns its path."""
    if count < 1:
        raise ValueError(f"count must be >= 1 (got {count})")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refs").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, s, min(count, s + _CHUNK)) for s in range(0, count, _CHUNK)]
    bar = tqdm(total=count, desc="toy training set", unit="record", disable=not progress)

    def results() -> Iterator[list[dict[str, Any]]]:
        if workers <= 1:
            yield from map(_chunk, jobs)
            return
        with ProcessPoolExecutor(workers) as pool:
            yield from pool.map(_chunk, jobs)

    records: list[dict[str, Any]] = []
    for part in results():
        records.extend(part)
        bar.update(len(part))
    bar.close()
    return write_manifest(records, out / "train.jsonl")
