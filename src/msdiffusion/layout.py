"""Subjects and their layout: boxes, region masks, and where a phrase sits in the prompt.

Boxes are ``(x0, y0, x1, y1)`` normalised to [0, 1] of the *output* image (x = column, y = row).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from PIL import Image

from .errors import InputError

Box = tuple[float, float, float, float]
ImageLike = Union[Image.Image, str, "os.PathLike[str]"]  # noqa: F821 — a path is loaded lazily

__all__ = [
    "Box",
    "Subject",
    "validate_box",
    "validate_scale",
    "mask_to_array",
    "mask_bbox",
    "phrase_token_span",
    "find_phrase",
]


def validate_box(box: Any, argument: str = "box") -> Box:
    """Check a box: four finite numbers in [0, 1] with x0 < x1 and y0 < y1; returns floats."""
    if isinstance(box, str):
        parts = [p for p in re.split(r"[,\s]+", box.strip()) if p]
        try:
            box = [float(p) for p in parts]
        except ValueError:
            raise InputError(argument, "must be four numbers x0,y0,x1,y1", box) from None
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise InputError(argument, "must be four numbers x0,y0,x1,y1", box) from None
    if len(values) != 4:
        raise InputError(argument, "must be four numbers x0,y0,x1,y1", box)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise InputError(argument, "coordinates must lie in [0, 1] (normalised to the output)", box)
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise InputError(argument, "needs x0 < x1 and y0 < y1", box)
    return (x0, y0, x1, y1)


def validate_scale(scale: Any, argument: str = "scale") -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise InputError(argument, "must be a number >= 0", scale) from None
    if not (math.isfinite(value) and value >= 0):
        raise InputError(argument, "must be a finite number >= 0", scale)
    return value


def mask_to_array(mask: Any, argument: str = "mask") -> np.ndarray:
    """A region mask (PIL image, array or tensor; > 0.5 of the range is inside) → bool (h, w)."""
    if isinstance(mask, Image.Image):
        array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    else:
        try:
            array = np.asarray(
                mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=np.float32
            )
        except (TypeError, ValueError):
            raise InputError(
                argument, "must be an image or a 2-D array", type(mask).__name__
            ) from None
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
    if array.ndim != 2 or array.size == 0:
        raise InputError(
            argument, "must be a 2-D (height, width) mask", getattr(array, "shape", None)
        )
    inside = array > 0.5
    if not inside.any():
        raise InputError(argument, "is empty (no pixel above 0.5)", tuple(array.shape))
    return inside


def mask_bbox(mask: np.ndarray) -> Box:
    """Normalised bounding box of a bool mask (used as the subject's box embedding)."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return (cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h)


@dataclass(frozen=True)
class Subject:
    """One subject: reference image(s), the phrase naming it, and where it goes.

    Args:
        image: a PIL image (or a path), or a list of them — several views of the same subject; each
            view is encoded and resampled on its own and the subject's tokens are their mean.
        box: ``(x0, y0, x1, y1)`` in [0, 1] of the output image. ``None`` when ``mask`` gives the
            region, or under auto layout (``mask_threshold``), where the attention maps place it.
        phrase: the word(s) naming the subject ("dog"); embedded into its grounding token, and
            located in the prompt for auto layout.
        mask: an arbitrary region instead of (or refining) the box: an image or array with the
            output's aspect ratio; pixels > 0.5 are inside.
        scale: this subject's image-attention scale; ``None`` uses the call's ``scale``.
    """

    image: Any
    box: Box | None
    phrase: str
    mask: Any = None
    scale: float | None = None

    def __post_init__(self) -> None:
        images = self.image if isinstance(self.image, (list, tuple)) else [self.image]
        if len(images) == 0 or any(im is None for im in images):
            raise InputError("subject.image", "needs at least one reference image", self.image)
        object.__setattr__(self, "image", list(images))
        if self.box is not None:
            object.__setattr__(self, "box", validate_box(self.box, "subject.box"))
        if not isinstance(self.phrase, str) or not self.phrase.strip():
            raise InputError("subject.phrase", "must be a non-empty string", self.phrase)
        if self.scale is not None:
            object.__setattr__(self, "scale", validate_scale(self.scale, "subject.scale"))
        if self.mask is not None:
            object.__setattr__(self, "mask", mask_to_array(self.mask, "subject.mask"))

    @property
    def images(self) -> list[Any]:
        return list(self.image)


def find_phrase(prompt: str, phrase: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the phrase in the prompt (any case, whole words)."""
    pattern = r"(?<!\w)" + re.escape(phrase.strip()) + r"(?!\w)"
    match = re.search(pattern, prompt, flags=re.IGNORECASE)
    return (match.start(), match.end()) if match else None


def phrase_token_span(
    tokenizer: Any, prompt: str, phrase: str, max_length: int = 77
) -> tuple[int, int] | None:
    """Token span ``(start, end)`` of ``phrase`` in the tokenised ``prompt`` (end exclusive).

    Positions count the start token (the first word is at 1), as the text encoder sees them; found
    with the tokenizer's character offsets, so any BPE split of the phrase is covered. ``None``
    when the phrase is not in the prompt or falls past the ``max_length`` window.
    """
    chars = find_phrase(prompt, phrase)
    if chars is None:
        return None
    encoded = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=max_length)
    hits = [
        i
        for i, (a, b) in enumerate(encoded["offset_mapping"])
        if b > a and a < chars[1] and b > chars[0]
    ]
    if not hits:
        return None
    return hits[0], hits[-1] + 1


def normalise_subject_lists(subjects: Any, batch_size: int) -> list[list[Subject]]:
    """``subjects`` as given to the pipeline → one list per prompt (validated types and counts)."""
    if subjects is None:
        return [[] for _ in range(batch_size)]
    if isinstance(subjects, Subject):
        subjects = [subjects]
    if not isinstance(subjects, Sequence):
        raise InputError(
            "subjects",
            "must be a list of Subject (or a list of lists for a batch)",
            type(subjects).__name__,
        )
    if all(isinstance(s, Subject) for s in subjects):
        per_prompt = [list(subjects) for _ in range(batch_size)]
    elif all(isinstance(s, (list, tuple)) for s in subjects):
        if len(subjects) != batch_size:
            raise InputError(
                "subjects", f"needs one list of subjects per prompt ({batch_size})", len(subjects)
            )
        per_prompt = [list(s) for s in subjects]
    else:
        raise InputError(
            "subjects",
            "must be a list of Subject (or a list of lists for a batch)",
            [type(s).__name__ for s in subjects],
        )
    for i, group in enumerate(per_prompt):
        for j, subject in enumerate(group):
            if not isinstance(subject, Subject):
                raise InputError(f"subjects[{i}][{j}]", "must be a Subject", type(subject).__name__)
    return per_prompt
