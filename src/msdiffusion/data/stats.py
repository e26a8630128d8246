"""Counters of a data build: how many items reach each stage, why the others were dropped.

Counts are keyed by name; the report orders them with ``STAGES`` (the funnel) and groups skip
reasons by the unit they count (``file:``, ``frame:``, ``shot:``, ``sample:``, ``subject:``,
``detection:``). Each input file's counts are stored with its part, so a resumed build reports
the same totals as a clean one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stats", "STAGES"]

# (key, meaning) in pipeline order; the report prints them as a funnel.
STAGES: tuple[tuple[str, str], ...] = (
    ("files", "input files"),
    ("files_ok", "input files that decoded"),
    ("frames_decoded", "video frames decoded"),
    ("frames_sampled", "frames sampled at video.sample_fps"),
    ("frames_kept", "frames passing the quality filter"),
    ("shots", "shots found (cut detector)"),
    ("shots_kept", "shots long enough"),
    ("targets", "target frames/images chosen"),
    ("captioned", "targets with a caption"),
    ("with_phrases", "targets with at least one entity phrase"),
    ("phrases", "entity phrases sent to the detector"),
    ("detections", "raw detections on targets"),
    ("after_score", "... above filters.score_threshold"),
    ("after_size", "... within the box size limits"),
    ("after_aspect", "... within filters.max_aspect"),
    ("after_nms", "... after NMS"),
    ("after_top_n", "... after filters.max_subjects"),
    ("with_subjects", "targets with at least filters.min_subjects subjects"),
    ("subject_candidates", "subjects looked for in reference frames"),
    ("subjects_matched", "subjects with a reference (matched or augmented)"),
    ("masks", "reference masks kept (SAM)"),
    ("samples", "samples written"),
    ("subjects", "subjects written"),
)


@dataclass
class Stats:
    """Stage counts, skip reasons, input conversions and seconds spent per step."""

    counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, n: int = 1) -> None:
        """Count ``n`` items reaching stage ``key``."""
        self.counts[key] += n

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` items dropped for ``reason`` (``unit:why``, e.g. ``frame:dark``)."""
        if n:
            self.skipped[reason] += n

    def convert(self, what: str, n: int = 1) -> None:
        """Count an input fixed on the way in (``cmyk``, ``palette``, ``16bit``, ``downscaled``)."""
        self.converted[what] += n

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the wall time of the block to ``seconds[step]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] += time.perf_counter() - start

    def merge(self, other: Stats) -> Stats:
        """Add ``other``'s counts into this one (returns self)."""
        self.counts.update(other.counts)
        self.skipped.update(other.skipped)
        self.converted.update(other.converted)
        self.seconds.update(other.seconds)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "converted": dict(sorted(self.converted.items())),
            "seconds": {k: round(v, 4) for k, v in sorted(self.seconds.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        return cls(
            Counter(data.get("counts", {})),
            Counter(data.get("skipped", {})),
            Counter(data.get("converted", {})),
            Counter(data.get("seconds", {})),
        )

    @classmethod
    def total(cls, parts: Iterable[Stats]) -> Stats:
        out = cls()
        for part in parts:
            out.merge(part)
        return out
