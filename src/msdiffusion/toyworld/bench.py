"""The toy benchmark: held-out identities in 1-, 2- and 3-subject prompts with preset boxes.

Written once into a data folder (``write_toy_benchmark``; ``msdiffusion eval standin`` does it)
as ``toy/spec.json`` plus the reference images; the evaluation harness enumerates it like MS-Bench
and scores it with the world's exact metrics (``msdiffusion.toyworld.metrics``).

Every sample draws its subjects from held-out colour pairs with pairwise disjoint colours (so each
pixel belongs to at most one subject), distinct classes, and a background; its candidate set for
identity retrieval is its own references plus distractors — other held-out identities — up to
``CANDIDATES`` (chance level 1 / CANDIDATES).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json
from ..geometry import Box
from .world import (
    BACKGROUNDS,
    CLASSES,
    HELD_OUT_PAIRS,
    Identity,
    Placed,
    caption,
    sample_identity,
    sample_reference,
)

__all__ = [
    "TOY_LAYOUTS",
    "CANDIDATES",
    "SAMPLES_PER_GROUP",
    "write_toy_benchmark",
    "toy_samples",
    "SPEC_NAME",
]

SPEC_NAME = "spec.json"
CANDIDATES = 6  # references each box's content is retrieved among (chance = 1/6)
SAMPLES_PER_GROUP = 40
# Preset boxes per subject count (sizes inside the training distribution).
TOY_LAYOUTS: dict[int, list[list[Box]]] = {
    1: [
        [(0.2, 0.2, 0.8, 0.8)],
        [(0.04, 0.15, 0.6, 0.75)],
        [(0.4, 0.25, 0.96, 0.85)],
        [(0.2, 0.04, 0.75, 0.6)],
    ],
    2: [
        [(0.03, 0.25, 0.48, 0.72), (0.52, 0.25, 0.97, 0.72)],  # side by side
        [(0.25, 0.02, 0.72, 0.48), (0.28, 0.52, 0.75, 0.98)],  # one above the other
        [(0.04, 0.04, 0.5, 0.5), (0.5, 0.5, 0.96, 0.96)],  # diagonal
        [(0.5, 0.06, 0.95, 0.5), (0.05, 0.5, 0.5, 0.94)],
    ],  # anti-diagonal
    3: [
        [(0.02, 0.3, 0.33, 0.7), (0.35, 0.3, 0.66, 0.7), (0.68, 0.3, 0.98, 0.7)],  # a row
        [(0.3, 0.03, 0.7, 0.45), (0.04, 0.53, 0.45, 0.95), (0.55, 0.53, 0.96, 0.95)],  # triangle
        [(0.03, 0.05, 0.45, 0.45), (0.55, 0.05, 0.97, 0.45), (0.3, 0.55, 0.7, 0.97)],
    ],
}


def _disjoint_pairs(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """``count`` held-out colour pairs with no colour in common, each in a random order."""
    pairs = sorted(tuple(sorted(p)) for p in HELD_OUT_PAIRS)
    while True:
        pick = [pairs[i] for i in rng.permutation(len(pairs))[:count]]
        colours = [c for p in pick for c in p]
        if len(set(colours)) == len(colours):
            return [p if rng.random() < 0.5 else (p[1], p[0]) for p in pick]


def toy_samples(seed: int = 0, per_group: int = SAMPLES_PER_GROUP) -> list[dict[str, Any]]:
    """The benchmark's samples (no pixels): prompt, background, subjects (class, identity, box)
    and distractor identities, deterministic for ``seed``."""
    samples = []
    backgrounds = list(BACKGROUNDS)
    for count in (1, 2, 3):
        for i in range(per_group):
            rng = np.random.default_rng([seed, 77, count, i])
            pairs = _disjoint_pairs(rng, count)
            classes = [CLASSES[k] for k in rng.permutation(len(CLASSES))[:count]]
            boxes = TOY_LAYOUTS[count][i % len(TOY_LAYOUTS[count])]
            background = backgrounds[(i + count) % len(backgrounds)]
            subjects = [
                (c, sample_identity(rng, held_out=True, pair=p), b)
                for c, p, b in zip(classes, pairs, boxes)
            ]
            taken = {frozenset(p) for p in pairs}
            others = [tuple(sorted(p)) for p in HELD_OUT_PAIRS if p not in taken]
            others.sort()
            chosen = [others[k] for k in rng.permutation(len(others))[: CANDIDATES - count]]
            distractors = [
                (
                    CLASSES[int(rng.integers(len(CLASSES)))],
                    sample_identity(rng, held_out=True, pair=p),
                )
                for p in chosen
            ]
            group = f"{count}-subject"
            samples.append(
                {
                    "id": f"{group}/{i:03d}/0",
                    "group": group,
                    "combination": f"{group}/{i:03d}",
                    "background": background,
                    "prompt": caption(classes, background),
                    "subjects": subjects,
                    "distractors": distractors,
                }
            )
    return samples


def _identity_json(identity: Identity) -> dict[str, Any]:
    return {
        "primary": identity.primary,
        "secondary": identity.secondary,
        "pattern": identity.pattern,
        "frequency": identity.frequency,
        "angle": identity.angle,
        "phase": identity.phase,
    }


def write_toy_benchmark(
    root: str | os.PathLike[str], *, seed: int = 0, per_group: int = SAMPLES_PER_GROUP
) -> Path:
    """Write ``root/toy/`` (references + ``spec.json``, written last); returns that folder."""
    out = Path(root) / "toy"
    (out / "refs").mkdir(parents=True, exist_ok=True)
    entries = []
    key = 3 * 10**8

    def save_reference(cls: str, identity: Identity, background: str, name: str) -> str:
        nonlocal key
        key += 1
        ref = sample_reference(
            Placed(cls, identity, (0, 0, 1, 1)), seed, key, avoid_background=background
        )
        relative = f"refs/{name}.png"
        ref.crop().save(out / relative)
        return relative

    for sample in toy_samples(seed, per_group):
        stem = sample["combination"].replace("/", "_")
        subjects = []
        for j, (cls, identity, box) in enumerate(sample["subjects"]):
            image = save_reference(cls, identity, sample["background"], f"{stem}_s{j}")
            subjects.append(
                {
                    "name": f"{cls}-{identity.primary}-{identity.secondary}",
                    "phrase": cls,
                    "box": list(box),
                    "image": image,
                    "colors": [identity.primary, identity.secondary],
                    "identity": _identity_json(identity),
                }
            )
        distractors = []
        for j, (cls, identity) in enumerate(sample["distractors"]):
            image = save_reference(cls, identity, sample["background"], f"{stem}_d{j}")
            distractors.append(
                {"phrase": cls, "image": image, "colors": [identity.primary, identity.secondary]}
            )
        entries.append(
            {
                "sample_id": sample["id"],
                "group": sample["group"],
                "combination": sample["combination"],
                "prompt": sample["prompt"],
                "background": sample["background"],
                "subjects": subjects,
                "distractors": distractors,
            }
        )
    spec = {
        "format": "msdiffusion-toy-benchmark",
        "version": 1,
        "world_seed": seed,
        "candidates": CANDIDATES,
        "samples": entries,
    }
    atomic_write_json(out / SPEC_NAME, spec)
    return out
