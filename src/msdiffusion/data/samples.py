"""From target frames (and their reference frames) to multi-subject samples — the model stages.

For the targets of one input file (or one chunk of images), in batches through each model:

1. caption the targets that have no sidecar caption; extract entity phrases (``phrases.py``);
2. detect the phrases on the targets; filter (``boxes.py``) → the subjects;
3. video input: detect the subjects' phrases in the reference frames, embed target and candidate
   crops, pair them by appearance (``matching.py``), segment each matched reference with SAM;
   image-only input: segment the subject on the target, and make an augmented crop of it;
4. return the samples, with a reference crop, its box and mask per subject.

Each stage counts what it kept and why it dropped the rest in the target's own ``Stats`` (its input
file's), and the seconds spent per batch in the ``stats`` passed in; nothing is written here.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..geometry import Box, box_to_pixels
from .augment import augmented_reference
from .boxes import Detection, filter_detections
from .config import BuildConfig
from .crops import crop_signature, crop_with_margin, signature_diff
from .matching import Candidate, match_subjects
from .models import Models
from .phrases import extract_phrases
from .stats import Stats

__all__ = ["Target", "BuiltSubject", "BuiltSample", "build_samples"]


@dataclass
class Target:
    """A target image and, for video input, the frames its references may come from."""

    key: str  # the input file's key (see ``sources.file_key``)
    index: int  # sample number within the file
    image: Image.Image
    caption: str | None = None
    caption_source: str = "sidecar"
    references: list[Image.Image] = field(default_factory=list)
    reference_times: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)  # its input file's counters


@dataclass
class BuiltSubject:
    """One subject of a sample, ready to write."""

    phrase: str
    box: Box
    reference: Image.Image
    reference_box: Box | None
    reference_mask: Image.Image | None
    augmented: bool
    meta: dict[str, Any]


@dataclass
class BuiltSample:
    target: Target
    caption: str
    subjects: list[BuiltSubject]


@dataclass
class _Work:
    target: Target
    phrases: list[str]
    subjects: list[Detection]


def _batched(
    step: str, stats: Stats, fn: Callable[..., Sequence[Any]], *lists: Sequence[Any], size: int
) -> list[Any]:
    """``fn`` over aligned slices of ``lists``, ``size`` items at a time; results concatenated.

    Counts the seconds (``seconds[step]``) and the images (``counts["images:<step>"]``).
    """
    out: list[Any] = []
    with stats.timed(step):
        for start in range(0, len(lists[0]), size):
            out.extend(fn(*(list(items[start : start + size]) for items in lists)))
    stats.add(f"images:{step}", len(lists[0]))
    return out


def build_samples(
    targets: list[Target], models: Models, cfg: BuildConfig, stats: Stats
) -> list[BuiltSample]:
    """Run the model stages over ``targets``; see the module docstring."""
    work = _ground(targets, models, cfg, stats)
    video = [w for w in work if w.target.references]
    images = [w for w in work if not w.target.references]
    built = _from_references(video, models, cfg, stats) + _from_augmentation(
        images, models, cfg, stats
    )
    built.sort(key=lambda s: (s.target.key, s.target.index))
    for sample in built:
        sample.target.stats.add("samples")
        sample.target.stats.add("subjects", len(sample.subjects))
    return built


def _ground(targets: list[Target], models: Models, cfg: BuildConfig, stats: Stats) -> list[_Work]:
    """Steps 1–2: captions, phrases, detection and filters on the targets."""
    size = models.batch_size
    uncaptioned = [t for t in targets if not t.caption]
    if uncaptioned and models.captioner is not None:
        captions = _batched(
            "caption", stats, models.captioner.caption, [t.image for t in uncaptioned], size=size
        )
        for target, caption in zip(uncaptioned, captions, strict=True):
            target.caption, target.caption_source = caption.strip(), "model"
    grounded: list[tuple[Target, list[str]]] = []
    for target in targets:
        if not target.caption:
            target.stats.skip("sample:no_caption")
            continue
        target.stats.add("captioned")
        phrases = extract_phrases(
            target.caption,
            stuff_words=cfg.stuff_words,
            vocabulary=cfg.phrase_vocabulary,
            max_phrases=cfg.max_phrases,
        )
        if not phrases:
            target.stats.skip("sample:no_phrases")
            continue
        target.stats.add("with_phrases")
        target.stats.add("phrases", len(phrases))
        grounded.append((target, phrases))
    detections = _batched(
        "detect",
        stats,
        models.detector.detect,
        [t.image for t, _ in grounded],
        [p for _, p in grounded],
        size=size,
    )
    work = []
    for (target, phrases), found in zip(grounded, detections, strict=True):
        subjects = filter_detections(found, cfg.filters, target.image.size, target.stats)
        if len(subjects) < cfg.filters.min_subjects:
            target.stats.skip("sample:too_few_subjects")
            continue
        target.stats.add("with_subjects")
        work.append(_Work(target, phrases, subjects))
    return work


def _from_references(
    work: list[_Work], models: Models, cfg: BuildConfig, stats: Stats
) -> list[BuiltSample]:
    """Step 3 for video input: find, match and segment each subject in a reference frame."""
    if not work:
        return []
    assert models.features is not None, "video input needs a feature encoder"
    size = models.batch_size
    # Reference frames are searched for the subjects' phrases only (deduplicated, in order).
    queries: list[list[int]] = [sorted({d.phrase for d in w.subjects}) for w in work]
    frames = [(k, f) for k, w in enumerate(work) for f in range(len(w.target.references))]
    found = _batched(
        "detect",
        stats,
        models.detector.detect,
        [work[k].target.references[f] for k, f in frames],
        [[work[k].phrases[p] for p in queries[k]] for k, _ in frames],
        size=size,
    )
    # Candidates: reference detections through the same filters, except the top-N cut.
    relaxed = dataclasses.replace(cfg.filters, max_subjects=10**9)
    candidates: list[list[Candidate]] = [[] for _ in work]
    for (k, f), dets in zip(frames, found, strict=True):
        image = work[k].target.references[f]
        for d in filter_detections(dets, relaxed, image.size, Stats()):
            candidates[k].append(Candidate(f, d.box, queries[k][d.phrase], d.score))
    # Appearance features of every subject crop and every candidate crop, in one batched pass.
    crops, signatures = [], []
    for k, w in enumerate(work):
        for d in w.subjects:
            crops.append(w.target.image.crop(box_to_pixels(d.box, *w.target.image.size)))
            signatures.append(crop_signature(w.target.image, d.box))
        for c in candidates[k]:
            frame = w.target.references[c.frame]
            crops.append(frame.crop(box_to_pixels(c.box, *frame.size)))
            signatures.append(crop_signature(frame, c.box))
    rows = _batched("features", stats, models.features.embed, crops, size=size)
    features = torch.stack(rows).numpy() if rows else np.zeros((0, 1), np.float32)  # (N, D)

    matched: list[tuple[int, list[tuple[int, Candidate, float]]]] = []
    offset = 0
    for k, w in enumerate(work):
        n_s, n_c = len(w.subjects), len(candidates[k])
        subj, cand = features[offset : offset + n_s], features[offset + n_s : offset + n_s + n_c]
        sig_s, sig_c = (
            signatures[offset : offset + n_s],
            signatures[offset + n_s : offset + n_s + n_c],
        )
        offset += n_s + n_c
        similarity = subj @ cand.T if n_c else np.zeros((n_s, 0))  # (S, C) cosine
        pixel_diff = np.array(
            [[signature_diff(a, b) for b in sig_c] for a in sig_s], dtype=np.float64
        ).reshape(n_s, n_c)
        counts = w.target.stats
        counts.add("subject_candidates", n_s)
        matches = match_subjects(
            [d.phrase for d in w.subjects], candidates[k], similarity, pixel_diff, cfg.match, counts
        )
        counts.add("subjects_matched", len(matches))
        if len(matches) < cfg.filters.min_subjects:
            counts.skip("sample:too_few_matched_subjects")
            continue
        matched.append(
            (k, [(m.subject, candidates[k][m.candidate], m.similarity) for m in matches])
        )

    # SAM on each reference frame that holds a matched subject, all its boxes at once.
    seg_keys = sorted({(k, c.frame) for k, ms in matched for _, c, _ in ms})
    seg_boxes = {
        key: [c.box for k, ms in matched for _, c, _ in ms if (k, c.frame) == key]
        for key in seg_keys
    }
    masks: dict[tuple[int, int], list[np.ndarray]] = {}
    if models.segmenter is not None and seg_keys:
        out = _batched(
            "segment",
            stats,
            models.segmenter.segment,
            [work[k].target.references[f] for k, f in seg_keys],
            [seg_boxes[key] for key in seg_keys],
            size=size,
        )
        masks = dict(zip(seg_keys, out, strict=True))
    used: dict[tuple[int, int], int] = {}

    margin = cfg.match.reference_margin
    samples = []
    for k, ms in matched:
        w = work[k]
        subjects = []
        for s, cand, similarity in ms:
            frame = w.target.references[cand.frame]
            crop = crop_with_margin(frame, cand.box, (margin,) * 4)
            mask = None
            if (k, cand.frame) in masks:
                slot = used.get((k, cand.frame), 0)
                used[(k, cand.frame)] = slot + 1
                mask = _mask_crop(
                    masks[(k, cand.frame)][slot],
                    cand.box,
                    crop.rect,
                    frame.size,
                    cfg.match.min_mask_fraction,
                    w.target.stats,
                )
            subjects.append(
                BuiltSubject(
                    phrase=w.phrases[w.subjects[s].phrase],
                    box=w.subjects[s].box,
                    reference=crop.image,
                    reference_box=crop.box,
                    reference_mask=mask,
                    augmented=False,
                    meta={
                        "score": round(w.subjects[s].score, 4),
                        "similarity": round(similarity, 4),
                        "reference_score": round(cand.score, 4),
                        "reference_time": w.target.reference_times[cand.frame],
                    },
                )
            )
        samples.append(BuiltSample(w.target, w.target.caption or "", subjects))
    return samples


def _from_augmentation(
    work: list[_Work], models: Models, cfg: BuildConfig, stats: Stats
) -> list[BuiltSample]:
    """Step 3 for image-only input: segment on the target, then an augmented crop per subject."""
    if not work:
        return []
    masks: list[list[np.ndarray]] = [[] for _ in work]
    if models.segmenter is not None:
        masks = _batched(
            "segment",
            stats,
            models.segmenter.segment,
            [w.target.image for w in work],
            [[d.box for d in w.subjects] for w in work],
            size=models.batch_size,
        )
    samples = []
    for w, target_masks in zip(work, masks, strict=True):
        rng = random.Random(f"{cfg.seed}:{w.target.key}:{w.target.index}")
        subjects = []
        w.target.stats.add("subject_candidates", len(w.subjects))
        w.target.stats.add("subjects_matched", len(w.subjects))
        for s, d in enumerate(w.subjects):
            mask = target_masks[s] if target_masks else None
            if mask is not None and not _mask_ok(
                mask, d.box, w.target.image.size, cfg.match.min_mask_fraction, w.target.stats
            ):
                mask = None
            crop, mask_image = augmented_reference(w.target.image, d.box, mask, cfg.augment, rng)
            subjects.append(
                BuiltSubject(
                    phrase=w.phrases[d.phrase],
                    box=d.box,
                    reference=crop.image,
                    reference_box=crop.box,
                    reference_mask=mask_image,
                    augmented=True,
                    meta={"score": round(d.score, 4)},
                )
            )
        samples.append(BuiltSample(w.target, w.target.caption or "", subjects))
    return samples


def _mask_ok(
    mask: np.ndarray, box: Box, size: tuple[int, int], min_fraction: float, stats: Stats
) -> bool:
    """A SAM mask covering less than ``min_fraction`` of its box is dropped (counted)."""
    x0, y0, x1, y1 = box_to_pixels(box, *size)
    inside = float(mask[y0:y1, x0:x1].sum()) / max((x1 - x0) * (y1 - y0), 1)
    if inside < min_fraction:
        stats.skip("mask:too_small")
        return False
    stats.add("masks")
    return True


def _mask_crop(
    mask: np.ndarray,
    box: Box,
    rect: tuple[int, int, int, int],
    size: tuple[int, int],
    min_fraction: float,
    stats: Stats,
) -> Image.Image | None:
    if not _mask_ok(mask, box, size, min_fraction, stats):
        return None
    left, top, right, bottom = rect
    return Image.fromarray(mask[top:bottom, left:right].astype(np.uint8) * 255, mode="L")
