"""The model stages of a build, over batches of items from any number of inputs.

Each stage runs one model over the items of a batch — all their images, in calls of
``models.batch_size`` — and stores its *raw* output on the items, before any threshold:

1. ``caption``: captions for targets without a sidecar caption, then the entity phrases
   (``phrases.py``); targets without a caption or phrase are done;
2. ``detect``: every frame of a target (the target and its reference frames) with all of its
   phrases, in batches of equal-size frames; detections scoring at least ``raw.min_score`` are
   kept, ``raw.max_detections`` per frame, best first, rounded (6 decimals) so that a refilter
   sees exactly what the build saw;
3. ``embed`` (video input): appearance features of every kept detection's crop, float16;
4. ``segment``: the thresholds are applied (``select.py``), then SAM masks the selected
   subjects (on the reference frame, or the target for image input).

``run_stage`` wraps each in the fault isolation of ``faults.py``; Ray actors (``engine.py``) and
the in-process path call the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry import box_to_pixels
from .boxes import Detection
from .config import BuildConfig
from .faults import isolate
from .item import Item
from .phrases import extract_phrases
from .select import select

if TYPE_CHECKING:  # torch and the model wrappers load in the processes that run models only
    from .models import Models

__all__ = ["STAGES", "run_stage", "stage_names"]


def _batched(fn: Callable[..., Sequence[Any]], *lists: Sequence[Any], size: int) -> list[Any]:
    """``fn`` over aligned slices of ``lists``, ``size`` items at a time; results concatenated."""
    out: list[Any] = []
    for start in range(0, len(lists[0]), size):
        out.extend(fn(*(list(items[start : start + size]) for items in lists)))
    return out


def _batched_by_size(
    fn: Callable[..., Sequence[Any]], images: Sequence[Any], *lists: Sequence[Any], size: int
) -> list[Any]:
    """``_batched`` over groups of equal image size, results back in input order.

    A detector that pads a batch to its largest image (Grounding DINO) gives an image slightly
    different results next to a larger one; batching equal sizes only keeps each image's result
    independent of which inputs shared its batch — so a resumed build sees the same numbers.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for n, image in enumerate(images):
        groups.setdefault(image.size, []).append(n)
    out: list[Any] = [None] * len(images)
    for members in groups.values():
        found = _batched(
            fn,
            [images[n] for n in members],
            *([items[n] for n in members] for items in lists),
            size=size,
        )
        for n, result in zip(members, found, strict=True):
            out[n] = result
    return out


def _timed(stage: str, items: list[Item], count: Callable[[Item], int], seconds: float) -> None:
    """Count each item's images through the model; book the batch's seconds on its first item
    (only their sum is reported; the counts stay the same whatever the batches were)."""
    for item in items:
        item.stats.add(f"images:{stage}", count(item))
    if items:
        items[0].stats.seconds[stage] += seconds


# ---- 1. caption + phrases ---------------------------------------------------------------------


def caption(items: list[Item], models: Models, cfg: BuildConfig) -> None:
    todo = [it for it in items if not it.caption and models.captioner is not None]

    def compute(batch: list[Item]) -> list[str]:
        return _batched(
            models.captioner.caption, [it.image() for it in batch], size=models.batch_size
        )

    def apply(item: Item, text: str) -> None:
        item.caption, item.caption_source = text.strip(), "model"

    _run_timed("caption", todo, compute, apply, cfg, lambda item: 1)
    for item in items:
        if not item.active():
            continue
        if not item.caption:
            item.stats.skip("sample:no_caption")
            item.done = True
            continue
        item.stats.add("captioned")
        item.phrases = extract_phrases(
            item.caption,
            stuff_words=cfg.stuff_words,
            vocabulary=cfg.phrase_vocabulary,
            max_phrases=cfg.max_phrases,
        )
        if not item.phrases:
            item.stats.skip("sample:no_phrases")
            item.done = True
            continue
        item.stats.add("with_phrases")
        item.stats.add("phrases", len(item.phrases))


# ---- 2. detect ----------------------------------------------------------------------------------


def _keep(found: list[Detection], cfg: BuildConfig) -> list[Detection]:
    kept = sorted(
        (d for d in found if d.score >= cfg.raw.min_score),
        key=lambda d: (-d.score, d.phrase, d.box),
    )[: cfg.raw.max_detections]
    return [Detection(tuple(round(v, 6) for v in d.box), round(d.score, 6), d.phrase) for d in kept]


def detect(items: list[Item], models: Models, cfg: BuildConfig) -> None:
    def compute(batch: list[Item]) -> list[list[list[Detection]]]:
        frames = [(it, f) for it in batch for f in range(len(it.frames))]
        found = _batched_by_size(
            models.detector.detect,
            [it.image(f) for it, f in frames],
            [it.phrases for it, _ in frames],
            size=models.batch_size,
        )
        out: list[list[list[Detection]]] = [[] for _ in batch]
        position = {id(it): k for k, it in enumerate(batch)}
        for (it, _), dets in zip(frames, found, strict=True):
            out[position[id(it)]].append(_keep(dets, cfg))
        return out

    def apply(item: Item, per_frame: list[list[Detection]]) -> None:
        item.detections = per_frame
        item.stats.add("raw_detections", sum(len(d) for d in per_frame))

    _run_timed("detect", items, compute, apply, cfg, lambda item: len(item.frames))


# ---- 3. embed -----------------------------------------------------------------------------------


def embed(items: list[Item], models: Models, cfg: BuildConfig) -> None:
    todo = [it for it in items if it.kind == "video"]

    def compute(batch: list[Item]) -> list[list[np.ndarray]]:
        crops = []
        for it in batch:
            for f, dets in enumerate(it.detections or []):
                image = it.image(f) if dets else None
                crops.extend(image.crop(box_to_pixels(d.box, *image.size)) for d in dets)
        import torch

        rows = _batched(models.features.embed, crops, size=models.batch_size) if crops else []
        features = (torch.stack(rows).numpy() if rows else np.zeros((0, 1), np.float32)).astype(
            np.float16
        )  # (crops, D): float16, as the raw records keep them
        out, start = [], 0
        for it in batch:  # crops are in (item, frame, detection) order: cut them back
            per_frame = []
            for dets in it.detections or []:
                per_frame.append(features[start : start + len(dets)])
                start += len(dets)
            out.append(per_frame)
        return out

    def apply(item: Item, per_frame: list[np.ndarray]) -> None:
        item.features = per_frame

    _run_timed(
        "features",
        todo,
        compute,
        apply,
        cfg,
        lambda item: sum(len(d) for d in item.detections or []),
    )


# ---- 4. select + segment ------------------------------------------------------------------------


def segment(items: list[Item], models: Models, cfg: BuildConfig) -> None:
    for item in items:
        if item.active():
            select(item, cfg)
    if models.segmenter is None:
        return
    todo = [it for it in items if it.active() and it.selected]

    def requests(item: Item) -> dict[int, list[tuple[int, int]]]:
        """Frame → [(frame, detection)] to segment in it."""
        wanted: dict[int, list[tuple[int, int]]] = {}
        for s in item.selected or []:
            frame, det = (s.frame, s.candidate) if s.frame else (0, s.detection)
            wanted.setdefault(frame, []).append((frame, det))
        return wanted

    def compute(batch: list[Item]) -> list[dict[tuple[int, int], np.ndarray]]:
        jobs = [
            (k, frame, keys)
            for k, it in enumerate(batch)
            for frame, keys in sorted(requests(it).items())
        ]
        images = [batch[k].image(frame) for k, frame, _ in jobs]
        boxes = [[batch[k].detections[f][d].box for f, d in keys] for k, _, keys in jobs]
        masks = _batched(models.segmenter.segment, images, boxes, size=models.batch_size)
        out: list[dict[tuple[int, int], np.ndarray]] = [{} for _ in batch]
        for (k, _, keys), frame_masks in zip(jobs, masks, strict=True):
            out[k].update(zip(keys, frame_masks, strict=True))
        return out

    def apply(item: Item, masks: dict[tuple[int, int], np.ndarray]) -> None:
        item.masks.update(masks)

    _run_timed("segment", todo, compute, apply, cfg, lambda item: len(requests(item)))


def _run_timed(
    stage: str,
    items: list[Item],
    compute: Callable[[list[Item]], list[Any]],
    apply: Callable[[Item, Any], None],
    cfg: BuildConfig,
    count: Callable[[Item], int],
) -> None:
    import time

    live = [it for it in items if it.active()]
    start = time.perf_counter()
    isolate(stage, live, compute, apply, cfg.faults.retries)
    _timed(stage, [it for it in live if it.failure is None], count, time.perf_counter() - start)


# name → (function, which model it needs, needed for image input)
STAGES: dict[str, tuple[Callable[[list[Item], Models, BuildConfig], None], str | None, bool]] = {
    "caption": (caption, "captioner", True),
    "detect": (detect, "detector", True),
    "embed": (embed, "features", False),
    "segment": (segment, "segmenter", True),
}


def stage_names(mode: str) -> list[str]:
    """The model stages a build of ``mode`` (videos or images) runs, in order."""
    return [name for name, (_, _, images) in STAGES.items() if mode == "videos" or images]


def run_stage(name: str, items: list[Item], models: Models, cfg: BuildConfig) -> list[Item]:
    """Run stage ``name`` over ``items`` (in place; returned for chaining)."""
    STAGES[name][0](items, models, cfg)
    return items
