"""Finding each target subject again in the reference frames.

A candidate is a detection of the *same phrase* in a reference frame. Its appearance similarity
is the cosine of the two crops' image-encoder features. A candidate is usable when the similarity
is at least ``similarity_threshold`` (the same object, not just the same class) and it is not a
near-duplicate of the target crop (similarity ≥ ``duplicate_similarity``, or nearly identical
pixels: a static object teaches copy-paste, the thing the video pairs are there to avoid).
Subjects and candidates are then paired greedily, most similar first, each candidate used once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Box
from .config import MatchConfig
from .stats import Stats

__all__ = ["Candidate", "Match", "match_subjects"]


@dataclass(frozen=True)
class Candidate:
    """A detection in reference frame ``frame`` of the target's phrase ``phrase``."""

    frame: int
    box: Box
    phrase: int
    score: float


@dataclass(frozen=True)
class Match:
    """Subject ``subject``'s reference: candidate ``candidate`` with its similarity."""

    subject: int
    candidate: int
    similarity: float


def match_subjects(
    phrases: list[int],
    candidates: list[Candidate],
    similarity: np.ndarray,
    pixel_diff: np.ndarray,
    cfg: MatchConfig,
    stats: Stats,
) -> list[Match]:
    """Pair subjects (their phrase indices) with candidates; counts why the others failed.

    ``similarity`` and ``pixel_diff`` are (S, C): subject × candidate. Returns matches sorted by
    subject.
    """
    n_subjects, n_candidates = len(phrases), len(candidates)
    assert similarity.shape == pixel_diff.shape == (n_subjects, n_candidates)
    same = np.array([[c.phrase == p for c in candidates] for p in phrases], dtype=bool).reshape(
        n_subjects, n_candidates
    )
    duplicate = same & (
        (similarity >= cfg.duplicate_similarity) | (pixel_diff < cfg.duplicate_pixel_diff)
    )
    similar = same & ~duplicate & (similarity >= cfg.similarity_threshold)
    pairs = sorted(
        zip(*np.nonzero(similar), strict=True),
        key=lambda sc: (-float(similarity[sc]), int(sc[0]), int(sc[1])),
    )
    matched: dict[int, Match] = {}
    used: set[int] = set()
    for s, c in pairs:
        s, c = int(s), int(c)
        if s not in matched and c not in used:
            matched[s] = Match(s, c, float(similarity[s, c]))
            used.add(c)
    for s in range(n_subjects):
        if s in matched:
            continue
        if not same[s].any():
            stats.skip("subject:not_found_in_reference")
        elif (same[s] & ~duplicate[s]).any() and not similar[s].any():
            stats.skip("subject:low_similarity")
        elif not similar[s].any():
            stats.skip("subject:near_duplicate")
        else:
            stats.skip("subject:reference_taken")
    return [matched[s] for s in sorted(matched)]
