"""The unit that flows through a build: one input file's summary, or one of its targets.

Every input file yields one *file item* (``index == -1``: its counts, or why it was skipped or
failed) followed by one *target item* per target (a shot's target frame with its reference frames,
or an image). Stages fill a target item in turn — caption and phrases, raw detections, features,
the selection, masks — and the last stage turns it into the files of its raw record and of its
training sample. Frames travel encoded (JPEG or PNG bytes) and are decoded where a stage needs
pixels: an item is small, picklable and the same bytes in every process.

Between Ray stages an item is one row ``{"order", "index", "item"}`` with the item pickled in
``item`` (``pack`` / ``unpack``): Ray Data moves the bytes, our code owns their meaning.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .boxes import Detection
from .stats import Stats

__all__ = ["Item", "Selected", "pack", "unpack", "decode_image", "encode_image"]


@dataclass
class Selected:
    """One subject of a target after the thresholds: its detection and, for video input, the
    reference detection it was matched to (``frame`` ≥ 1 indexes ``Item.frames``)."""

    detection: int  # index into the target's detections (frame 0)
    frame: int = 0  # the reference's frame; 0: image input (the reference is the target)
    candidate: int = -1  # index into that frame's detections
    similarity: float | None = None


@dataclass
class Item:
    order: int  # the input's position in the sorted input list (sets its shard)
    input: str  # the input's relative path
    key: str  # ``sources.file_key(input)``: names its samples
    index: int = -1  # target number within the input; -1: the file item
    kind: str = "video"  # video | image
    frames: list[bytes] = field(default_factory=list)  # [target, reference frames...], encoded
    reference_times: list[float] = field(default_factory=list)
    caption: str | None = None
    caption_source: str = "sidecar"
    phrases: list[str] = field(default_factory=list)
    detections: list[list[Detection]] | None = None  # raw, per frame (scores ≥ raw.min_score)
    features: list[np.ndarray] | None = None  # per frame: (detections, D) float16, L2-normalised
    selected: list[Selected] | None = None
    masks: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (frame, det) → bool
    meta: dict[str, Any] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)  # counts up to the models (kept with the raw)
    select_stats: Stats = field(default_factory=Stats)  # counts of the thresholds (refilter)
    failure: dict[str, Any] | None = None  # {"stage", "reason", "attempts"}
    done: bool = False  # nothing left for the model stages (dropped, or a file item)
    raw_files: dict[str, bytes] | None = None  # members of its raw record (finalize)
    sample_files: dict[str, bytes] | None = None  # members of its training sample (finalize)
    phash: int | None = None  # the target's perceptual hash, when it has a sample

    @property
    def sample_key(self) -> str:
        """The WebDataset key of its records (no dots: WebDataset splits names at the first)."""
        return f"{self.key}-{self.index:04d}"

    def active(self) -> bool:
        return not self.done and self.failure is None

    def image(self, frame: int = 0) -> Image.Image:
        return decode_image(self.frames[frame])

    def fail(self, stage: str, reason: str, attempts: int) -> None:
        self.failure = {"stage": stage, "reason": reason, "attempts": attempts}
        self.done = True


def pack(item: Item) -> dict[str, Any]:
    return {
        "order": item.order,
        "index": item.index,
        "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL),
    }


def unpack(data: bytes) -> Item:
    return pickle.loads(data)


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def encode_image(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """``fmt``: ``jpg`` (no chroma subsampling) or ``png``."""
    buffer = io.BytesIO()
    if fmt == "jpg":
        image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()
