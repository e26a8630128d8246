"""The thresholds: raw detections and features → a target's subjects and their references.

Pure CPU work on what the model stages kept, so that a build and ``data refilter`` (other
thresholds, same raw outputs) run exactly the same code:

* the target's detections go through the filters (score, size, aspect, NMS, top-N:
  ``boxes.filter_detections``) → its subjects; fewer than ``filters.min_subjects`` → dropped;
* video input: each reference frame's detections of the *same phrase*, through the same filters
  but the top-N cut, are the candidates; the cosine of the crops' features and a 32-px pixel
  difference decide (``matching.py``: similar enough, not a near-duplicate, one to one);
* image input: every subject is kept (its reference will be an augmented crop of the target).

Counts go to ``item.select_stats`` (recomputed from scratch on every call).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .boxes import Detection, filter_detections
from .config import BuildConfig
from .crops import crop_signature, signature_diff
from .item import Item, Selected
from .matching import Candidate, match_subjects
from .stats import Stats

__all__ = ["select"]


def _filtered(
    dets: list[Detection],
    cfg: BuildConfig,
    size: tuple[int, int],
    stats: Stats,
    *,
    top_n: bool = True,
) -> list[int]:
    """Indices into ``dets`` of the detections that pass the filters, best first."""
    filters = cfg.filters if top_n else dataclasses.replace(cfg.filters, max_subjects=10**9)
    kept = filter_detections(dets, filters, size, stats)
    where = {id(d): n for n, d in enumerate(dets)}
    return [where[id(d)] for d in kept]


def select(item: Item, cfg: BuildConfig) -> None:
    """Set ``item.selected`` (or mark the item done) from its raw outputs and ``cfg``."""
    stats = item.select_stats = Stats()
    item.selected = None
    assert item.detections is not None, "select needs the detect stage"
    target = item.image(0)
    subjects = _filtered(item.detections[0], cfg, target.size, stats)
    if len(subjects) < cfg.filters.min_subjects:
        stats.skip("sample:too_few_subjects")
        return
    stats.add("with_subjects")
    stats.add("subject_candidates", len(subjects))
    if item.kind == "image":
        stats.add("subjects_matched", len(subjects))
        item.selected = [Selected(detection=s) for s in subjects]
        return
    assert item.features is not None, "video input needs the embed stage"

    candidates: list[Candidate] = []
    where: list[tuple[int, int]] = []  # candidate → (frame, detection)
    for f in range(1, len(item.frames)):
        frame = item.image(f)
        for n in _filtered(item.detections[f], cfg, frame.size, Stats(), top_n=False):
            d = item.detections[f][n]
            candidates.append(Candidate(f - 1, d.box, d.phrase, d.score))
            where.append((f, n))
    subj = np.stack([item.features[0][s] for s in subjects]).astype(np.float32)  # (S, D)
    cand = (
        np.stack([item.features[f][n] for f, n in where]).astype(np.float32)
        if where
        else np.zeros((0, subj.shape[1]), np.float32)
    )  # (C, D)
    similarity = subj @ cand.T  # (S, C) cosine (features are L2-normalised)
    sig_s = [crop_signature(target, item.detections[0][s].box) for s in subjects]
    frames = {f: item.image(f) for f, _ in where}
    sig_c = [crop_signature(frames[f], item.detections[f][n].box) for f, n in where]
    pixel_diff = np.array(
        [[signature_diff(a, b) for b in sig_c] for a in sig_s], dtype=np.float64
    ).reshape(len(subjects), len(where))
    matches = match_subjects(
        [item.detections[0][s].phrase for s in subjects],
        candidates,
        similarity.astype(np.float64),
        pixel_diff,
        cfg.match,
        stats,
    )
    stats.add("subjects_matched", len(matches))
    if len(matches) < cfg.filters.min_subjects:
        stats.skip("sample:too_few_matched_subjects")
        return
    item.selected = [
        Selected(
            detection=subjects[m.subject],
            frame=where[m.candidate][0],
            candidate=where[m.candidate][1],
            similarity=round(m.similarity, 4),
        )
        for m in matches
    ]
