"""The last stage: a selected target → the files of its training sample and of its raw record.

* The **training sample** (``msdiffusion.shards`` documents the format): the target image, one
  reference crop per subject (the reference frame around its matched box, grown by
  ``match.reference_margin``; image input: an augmented crop of the target), its mask crop, and
  the record JSON in the manifest's schema whose paths name the sample's own members.
* The **raw record**: the frames as decoded, the caption and phrases, every kept detection with
  its score, the features and the masks — what ``data refilter`` needs to re-apply thresholds
  without the models.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

import numpy as np
from PIL import Image

from ..geometry import Box, box_to_pixels
from ..shards import RAW_RECORD, RECORD, mask_member, reference_member, target_member
from .augment import augmented_reference
from .config import BuildConfig
from .crops import crop_with_margin
from .dedup import phash
from .item import Item, encode_image
from .stats import Stats

__all__ = ["finalize", "raw_files", "sample_files"]


def _box(box: tuple[float, ...] | None) -> list[float] | None:
    return None if box is None else [round(float(v), 6) for v in box]


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _frame_ext(data: bytes) -> str:
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def raw_files(item: Item) -> dict[str, bytes]:
    """The members of ``item``'s raw record (its model outputs; see the module docstring)."""
    files = {f"frame{f}.{_frame_ext(data)}": data for f, data in enumerate(item.frames)}
    record = {
        "input": item.input,
        "order": item.order,
        "index": item.index,
        "kind": item.kind,
        "caption": item.caption,
        "caption_source": item.caption_source,
        "phrases": item.phrases,
        "reference_times": item.reference_times,
        "meta": item.meta,
        "stats": {**item.stats.to_dict(), "seconds": {}},  # no clocks:
        # a raw record's bytes depend only on its input and the settings
        "detections": [
            [[*d.box, d.score, d.phrase] for d in frame] for frame in item.detections or []
        ],
        "masks": sorted([f, d] for f, d in item.masks),
    }
    files[RAW_RECORD] = json.dumps(record, sort_keys=True).encode()
    if item.features is not None:
        buffer = io.BytesIO()
        np.save(
            buffer, np.concatenate(item.features) if item.features else np.zeros((0, 1), np.float16)
        )
        files["features.npy"] = buffer.getvalue()
    for (f, d), mask in sorted(item.masks.items()):
        files[f"mask{f}_{d}.png"] = _png(mask)
    return files


def _mask_ok(mask: np.ndarray, box: Box, min_fraction: float, stats: Stats) -> bool:
    """A SAM mask covering less than ``min_fraction`` of its box is dropped (counted)."""
    h, w = mask.shape
    x0, y0, x1, y1 = box_to_pixels(box, w, h)
    inside = float(mask[y0:y1, x0:x1].sum()) / max((x1 - x0) * (y1 - y0), 1)
    if inside < min_fraction:
        stats.skip("mask:too_small")
        return False
    stats.add("masks")
    return True


def _mask_crop(
    mask: np.ndarray, box: Box, rect: tuple[int, int, int, int], min_fraction: float, stats: Stats
) -> Image.Image | None:
    """The mask over the crop ``rect``, or None when it covers < ``min_fraction`` of the box."""
    if not _mask_ok(mask, box, min_fraction, stats):
        return None
    left, top, right, bottom = rect
    return Image.fromarray(mask[top:bottom, left:right].astype(np.uint8) * 255, mode="L")


def sample_files(item: Item, cfg: BuildConfig) -> tuple[dict[str, bytes], int]:
    """The members of ``item``'s training sample and its target's perceptual hash."""
    assert item.selected and item.detections is not None
    stats, fmt = item.select_stats, cfg.image_format
    target = item.image(0)
    files = {target_member(fmt): encode_image(target, fmt, cfg.jpeg_quality)}
    rng = random.Random(f"{cfg.seed}:{item.key}:{item.index}")
    subjects, subject_meta = [], []
    for k, s in enumerate(item.selected):
        d = item.detections[0][s.detection]
        mask_key = (s.frame, s.candidate) if s.frame else (0, s.detection)
        mask = item.masks.get(mask_key)
        if mask is None and cfg.models.segmenter is not None:
            stats.skip("mask:not_in_raw")  # a refilter picked a box the build did not segment
        mask_image: Image.Image | None = None
        if s.frame:  # video: a crop of the reference frame around the matched box
            frame = item.image(s.frame)
            cand = item.detections[s.frame][s.candidate]
            crop = crop_with_margin(frame, cand.box, (cfg.match.reference_margin,) * 4)
            if mask is not None:
                mask_image = _mask_crop(
                    mask, cand.box, crop.rect, cfg.match.min_mask_fraction, stats
                )
            meta: dict[str, Any] = {
                "score": round(d.score, 4),
                "similarity": s.similarity,
                "reference_score": round(cand.score, 4),
                "reference_time": item.reference_times[s.frame - 1],
            }
        else:  # image: an augmented crop of the target itself
            if mask is not None and not _mask_ok(mask, d.box, cfg.match.min_mask_fraction, stats):
                mask = None
            crop, mask_image = augmented_reference(target, d.box, mask, cfg.augment, rng)
            meta = {"score": round(d.score, 4)}
        files[reference_member(k, fmt)] = encode_image(crop.image, fmt, cfg.jpeg_quality)
        if mask_image is not None:
            files[mask_member(k)] = encode_image(mask_image, "png")
        subjects.append(
            {
                "phrase": item.phrases[d.phrase],
                "box": _box(d.box),
                "reference": reference_member(k, fmt),
                "reference_box": _box(crop.box),
                "reference_mask": mask_member(k) if mask_image is not None else None,
                "augmented": not s.frame,
            }
        )
        subject_meta.append(meta)
    record = {
        "id": item.sample_key,
        "image": target_member(fmt),
        "caption": item.caption or "",
        "subjects": subjects,
        "meta": {**item.meta, "caption_source": item.caption_source, "subjects": subject_meta},
    }
    files[RECORD] = json.dumps(record, sort_keys=True).encode()
    return files, phash(target)


def finalize(item: Item, cfg: BuildConfig, *, keep_raw: bool = True) -> Item:
    """Fill ``raw_files`` / ``sample_files`` / ``phash`` and drop the frames (written now)."""
    if item.failure is None and item.detections is not None:
        if item.selected:
            item.sample_files, item.phash = sample_files(item, cfg)
        if keep_raw:
            item.raw_files = raw_files(item)
    item.frames, item.features, item.masks = [], None, {}
    return item
