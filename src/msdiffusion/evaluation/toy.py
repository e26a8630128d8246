"""Scoring the toy benchmark with the toy world's exact metrics (no scoring models).

Per image, for each subject: ``identity`` (retrieval of its box's content among the sample's
references and its distractors; chance 1 / candidates) and ``layout`` (share of its pixels inside
its box). Per image: their means, ``toy_identity_all`` (the product of the subjects' identity
scores: every subject right at once) and ``toy_background`` (the background outside the boxes is
the one the prompt names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..benchmarks import Benchmark, BenchSample, load_toy_spec
from ..errors import InputError
from ..toyworld.metrics import (
    background_of,
    classify_pixels,
    colour_histogram,
    identity_score,
    layout_share,
)

__all__ = ["ToyScorer", "TOY_METRICS"]

TOY_METRICS = ("toy_identity", "toy_identity_all", "toy_layout", "toy_background")


class ToyScorer:
    """Reads the benchmark's spec once: subject colours, candidate references."""

    def __init__(self, benchmark: Benchmark):
        _, spec = load_toy_spec(benchmark.data_dir)
        self.candidates = int(spec["candidates"])
        self._spec = {e["sample_id"]: e for e in spec["samples"]}
        self._hist: dict[str, Any] = {}
        self._root = Path(benchmark.data_dir)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "toy": {
                "model": "toy-world pixel metrics",
                "candidates": self.candidates,
                "chance_identity": 1.0 / self.candidates,
            }
        }

    def _reference(self, relative: str) -> Any:
        if relative not in self._hist:
            path = self._root / relative
            try:
                with Image.open(path) as im:
                    self._hist[relative] = colour_histogram(classify_pixels(im.convert("RGB")))
            except OSError:
                raise InputError("data", "toy reference image is unreadable", str(path)) from None
        return self._hist[relative]

    def score(
        self, samples: Sequence[BenchSample], images: Sequence[Image.Image]
    ) -> list[dict[str, Any]]:
        rows = []
        for sample, image in zip(samples, images, strict=True):
            entry = self._spec[sample.id]
            labels = classify_pixels(image)
            candidates = [self._reference(s["image"]) for s in entry["subjects"]] + [
                self._reference(d["image"]) for d in entry["distractors"]
            ]
            subjects = []
            for n, s in enumerate(entry["subjects"]):
                content = colour_histogram(labels, s["box"])
                subjects.append(
                    {
                        "name": s["name"],
                        "phrase": s["phrase"],
                        "box": s["box"],
                        "identity": identity_score(content, candidates, n),
                        "layout": layout_share(labels, s["colors"], s["box"]),
                    }
                )
            found = background_of(labels, [s["box"] for s in entry["subjects"]])
            rows.append(
                {
                    "sample_id": sample.id,
                    "group": sample.group,
                    "n_subjects": len(subjects),
                    "toy_identity": sum(s["identity"] for s in subjects) / len(subjects),
                    "toy_identity_all": math.prod(s["identity"] for s in subjects),
                    "toy_layout": sum(s["layout"] for s in subjects) / len(subjects),
                    "toy_background": float(found == entry["background"]),
                    "background_found": found,
                    "subjects": subjects,
                }
            )
        return rows
