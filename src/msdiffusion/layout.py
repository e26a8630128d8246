"""Subjects and their layout: boxes, region masks, and where a phrase sits in the prompt.

Boxes are ``(x0, y0, x1, y1)`` normalised to [0, 1] of the *output* image (x = column, y = row).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .checks import check_number
from .errors import ErrorList, InputError, Location, format_location
from .geometry import EMPTY_BOX, Box, mask_bbox, validate_box

logger = logging.getLogger(__name__)

__all__ = [
    "Subject",
    "MAX_SCALE",
    "validate_scale",
    "mask_to_array",
    "phrase_token_span",
    "find_phrase",
    "normalise_subject_lists",
    "SubjectLayout",
    "mask_fits",
    "check_mask_aspect",
    "validate_layout",
]


# Above this the image branch only saturates (and far above it, overflows to NaN).
MAX_SCALE = 10.0


def validate_scale(scale: Any, argument: str | Location = "scale") -> float:
    """An image-attention scale: a number in [0, MAX_SCALE]."""
    return check_number(argument, scale, low=0.0, high=MAX_SCALE)


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# ITU-R 601-2 luma, the weights PIL's own grey conversion uses
_LUMA = np.array([0.299, 0.587, 0.114])


def _mask_values(mask: Any, argument: str | Location) -> np.ndarray:
    """A mask as a 2-D array of its raw values (alpha where it has one, else grey levels)."""
    if isinstance(mask, Image.Image):
        if mask.mode == "P" and "transparency" in mask.info:
            mask = mask.convert("RGBA")
        if mask.mode in _ALPHA_MODES:
            return np.asarray(mask.getchannel("A"))
        if mask.mode in ("1", "L", "F") or mask.mode.startswith("I"):
            return np.asarray(mask)
        return np.asarray(mask.convert("L"))
    try:
        array = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    except (TypeError, ValueError):
        raise InputError(argument, "must be an image or a 2-D array", type(mask).__name__) from None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
        channels = array.shape[-1]
        if channels in (2, 4):  # grey + alpha, RGB + alpha: the alpha is the region
            array = array[..., -1]
        elif channels == 3:
            array = array.astype(np.float64) @ _LUMA
        else:
            array = array[..., 0]
    return array


def mask_to_array(mask: Any, argument: str | Location = "mask") -> np.ndarray:
    """A region mask → bool (h, w), by one rule for images and arrays alike.

    The region: an image's alpha channel when it has one (a cut-out), else its grey level; for
    arrays, (h, w), (1, h, w), or (h, w, c) with the last channel as alpha when c is 2 or 4. The
    values' range is read from the values: booleans; within [0, 1]; 8-bit levels (up to 255); or
    16-bit levels (up to 65535) — inside is above half of that range.
    """
    array = _mask_values(mask, argument)
    if array.ndim != 2 or array.size == 0:
        raise InputError(argument, "must be a 2-D (height, width) mask", tuple(array.shape))
    if array.dtype == np.bool_:
        inside = array
    else:
        if not np.issubdtype(array.dtype, np.number):
            raise InputError(argument, "must hold numbers", str(array.dtype))
        values = array.astype(np.float64)
        if not np.isfinite(values).all() or values.min() < 0:
            raise InputError(argument, "values must be finite and >= 0", float(values.min()))
        peak = values.max()
        top = next((t for t in (1.0, 255.0, 65535.0) if peak <= t), None)
        if top is None:
            raise InputError(argument, "values must lie in [0, 1], 0–255 or 0–65535", float(peak))
        inside = values > top / 2
    if not inside.any():
        raise InputError(argument, "is empty (no pixel inside the region)", tuple(array.shape))
    return inside


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
        mask: an arbitrary region instead of (or refining) the box: an image (its alpha when it
            has one) or an array with the output's aspect ratio; inside is above half of the
            values' range (0–1, 0–255 or 0–65535; see ``mask_to_array``).
        scale: this subject's image-attention scale in [0, 10] (``MAX_SCALE``): its attention
            probabilities are multiplied by it — at 0 it still competes for shared cells;
            ``None`` uses the call's ``scale``.
    """

    image: Any
    box: Box | None
    phrase: str
    mask: Any = None
    scale: float | None = None

    def __post_init__(self) -> None:
        images = self.image if isinstance(self.image, (list, tuple)) else [self.image]
        if len(images) == 0 or any(im is None for im in images):
            raise InputError(("subject", "image"), "needs at least one reference image", self.image)
        object.__setattr__(self, "image", list(images))
        if self.box is not None:
            object.__setattr__(self, "box", validate_box(self.box, ("subject", "box")))
        if not isinstance(self.phrase, str) or not self.phrase.strip():
            raise InputError(("subject", "phrase"), "must be a non-empty string", self.phrase)
        if self.scale is not None:
            object.__setattr__(self, "scale", validate_scale(self.scale, ("subject", "scale")))
        if self.mask is not None:
            object.__setattr__(self, "mask", mask_to_array(self.mask, ("subject", "mask")))

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
                raise InputError(("subjects", i, j), "must be a Subject", type(subject).__name__)
    return per_prompt


def check_mask_aspect(mask: np.ndarray, size: tuple[int, int], argument: Location) -> None:
    """A region mask must have the output's aspect ratio (``size`` = (height, width)), up to the
    rounding of one of its sides (:func:`mask_fits`)."""
    height, width = size
    mh, mw = mask.shape
    if not mask_fits((mh, mw), size):
        raise InputError(
            argument,
            f"must have the output's aspect ratio (width x height {width}x{height}), "
            "up to rounding",
            f"{mw}x{mh}",
        )


@dataclass
class SubjectLayout:
    """One subject, checked against its prompt and output size."""

    subject: Subject
    box: Box  # for the grounding embedding (the mask's bounding box if there is no box)
    region_box: Box  # the attention region's box (EMPTY_BOX: none)
    mask: np.ndarray | None
    span: tuple[int, int]  # phrase token span in the prompt, (0, 0) when not found
    scale: float


def mask_fits(mask_size: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether a (rows, columns) mask has the aspect ratio of a (height, width) output, up to the
    rounding of one of its sides to whole pixels."""
    (mh, mw), (height, width) = mask_size, size
    return abs(mw - mh * width / height) <= 0.5 or abs(mh - mw * height / width) <= 0.5


def validate_layout(
    subjects: list[list[Subject]],
    prompts: Sequence[str | None],
    tokenizer: Any,
    size: tuple[int, int],
    scale: float,
    mask_threshold: float | None,
) -> list[list[SubjectLayout]]:
    """Check every subject against its prompt and the output ``size`` (height, width): masks of
    the output's aspect ratio, a region for each subject (or auto layout), phrases in the prompt
    (required under auto layout, a warning otherwise; a prompt of None — given as embeddings — is
    not searched). Reports every error at once."""
    errors = ErrorList()
    layouts: list[list[SubjectLayout]] = []
    for i, (group, prompt) in enumerate(zip(subjects, prompts)):
        row = []
        for j, subject in enumerate(group):
            where: Location = ("subjects", i, j) if len(subjects) > 1 else ("subjects", j)
            mask = subject.mask
            if mask is not None:
                with errors.check():
                    check_mask_aspect(mask, size, (*where, "mask"))
            if subject.box is None and mask is None and mask_threshold is None:
                errors.add(
                    InputError(
                        (*where, "box"),
                        "needs a box or a mask (or auto layout: mask_threshold)",
                        None,
                    )
                )
            span = None if prompt is None else phrase_token_span(tokenizer, prompt, subject.phrase)
            if span is None:
                if mask_threshold is not None:
                    rule = (
                        f"must appear in the prompt {prompt!r} for auto layout"
                        if prompt is not None
                        else "needs the prompt text for auto layout (prompt, not prompt_embeds)"
                    )
                    errors.add(InputError((*where, "phrase"), rule, subject.phrase))
                elif prompt is not None:
                    logger.warning(
                        "%s.phrase %r is not in the prompt %r",
                        format_location(where),
                        subject.phrase,
                        prompt,
                    )
                span = (0, 0)
            bbox = subject.box or (mask_bbox(mask) if mask is not None else EMPTY_BOX)
            region = subject.box or EMPTY_BOX
            own = scale if subject.scale is None else subject.scale
            row.append(SubjectLayout(subject, bbox, region, mask, span, own))
        layouts.append(row)
    errors.raise_if_any()
    return layouts
