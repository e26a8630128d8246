"""Subjects of a pipeline call → ``MSConditioning``: validate the layout, encode every reference
image and phrase in one batch each, resample, and pad per batch (different subject counts per
prompt are fine: padding gets scale 0 and no region, so it never reaches the attention).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..conditioning import MSConditioning
from ..encoding import encode_phrases, encode_references, load_image
from ..errors import InputError
from ..layout import Subject, mask_bbox, phrase_token_span

logger = logging.getLogger(__name__)

__all__ = ["SubjectLayout", "validate_layout", "build_conditioning"]


@dataclass
class SubjectLayout:
    """One subject, checked against its prompt and output size."""

    subject: Subject
    box: tuple[
        float, float, float, float
    ]  # for the grounding embedding (the mask's bbox if no box)
    region_box: tuple[float, float, float, float]  # the attention region's box (zeros: none)
    mask: np.ndarray | None
    span: tuple[int, int]  # phrase token span in the prompt, (0, 0) when not found
    scale: float


def validate_layout(
    subjects: list[list[Subject]],
    prompts: list[str],
    tokenizer: Any,
    height: int,
    width: int,
    scale: float,
    mask_threshold: float | None,
) -> list[list[SubjectLayout]]:
    """Check every subject against its prompt and the output size; raise ``InputError`` early."""
    layouts: list[list[SubjectLayout]] = []
    for i, (group, prompt) in enumerate(zip(subjects, prompts)):
        row = []
        for j, subject in enumerate(group):
            where = f"subjects[{i}][{j}]" if len(subjects) > 1 else f"subjects[{j}]"
            mask = subject.mask
            if mask is not None:
                mh, mw = mask.shape
                if abs(mh * width - mw * height) > max(height, width, mh, mw):
                    raise InputError(
                        f"{where}.mask",
                        f"must have the output's aspect ratio (width x height {width}x{height})",
                        f"{mw}x{mh}",
                    )
            if subject.box is None and mask is None and mask_threshold is None:
                raise InputError(
                    f"{where}.box", "needs a box or a mask (or auto layout: mask_threshold)", None
                )
            span = phrase_token_span(tokenizer, prompt, subject.phrase)
            if span is None:
                if mask_threshold is not None:
                    raise InputError(
                        f"{where}.phrase",
                        f"must appear in the prompt {prompt!r} for auto layout",
                        subject.phrase,
                    )
                logger.warning(
                    "%s.phrase %r is not in the prompt %r", where, subject.phrase, prompt
                )
                span = (0, 0)
            bbox = subject.box or (mask_bbox(mask) if mask is not None else (0.0, 0.0, 0.0, 0.0))
            region = subject.box or (0.0, 0.0, 0.0, 0.0)
            row.append(
                SubjectLayout(
                    subject,
                    bbox,
                    region,
                    mask,
                    span,
                    scale if subject.scale is None else subject.scale,
                )
            )
        layouts.append(row)
    return layouts


def _masks_to_grid(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """bool (h, w) → bool (H, W): a cell is inside when any mask pixel in it is (max-pool)."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]  # (1, 1, h, w)
    if tensor.shape[-2] < size[0] or tensor.shape[-1] < size[1]:
        tensor = F.interpolate(tensor, size=size, mode="nearest")
    return F.adaptive_max_pool2d(tensor, size)[0, 0] > 0.5


def build_conditioning(
    layouts: list[list[SubjectLayout]],
    *,
    adapter: torch.nn.Module,
    image_encoder: torch.nn.Module,
    feature_extractor: Any,
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    latent_size: tuple[int, int],
    num_images_per_prompt: int,
    cond_start: int,
    dtype: torch.dtype,
    device: torch.device,
    drop_grounding_tokens: bool = False,
    mask_threshold: float | None = None,
    start_step: int = 0,
) -> MSConditioning | None:
    """Encode and pad the subjects of a batch; None when no subject has a non-zero scale."""
    batch = len(layouts)
    num_subjects = max((len(row) for row in layouts), default=0)
    if num_subjects == 0 or all(s.scale == 0 for row in layouts for s in row):
        return None

    # 1. flatten: every reference image, with its subject's slot and grounding
    refs, owner, slots = [], [], []
    for i, row in enumerate(layouts):
        for j, s in enumerate(row):
            for k, image in enumerate(s.subject.images):
                refs.append(load_image(image, f"subjects[{i}][{j}].image[{k}]"))
                owner.append(len(slots))
            slots.append((i, j, s))
    phrases = sorted({s.subject.phrase for _, _, s in slots})

    # 2. frozen encoders, one batch each
    image_embeds = encode_references(refs, feature_extractor, image_encoder)  # (R, T, D_img)
    phrase_embeds = encode_phrases(phrases, tokenizer, text_encoder)  # (P, D_phrase)
    owner_t = torch.tensor(owner, device=device)
    phrase_idx = torch.tensor([phrases.index(slots[o][2].subject.phrase) for o in owner])
    boxes = torch.tensor([slots[o][2].box for o in owner], dtype=torch.float32)  # (R, 4)

    # 3. resample every reference; a subject's tokens are the mean over its references
    param = next(adapter.parameters())
    drop = torch.full((len(refs),), drop_grounding_tokens, device=param.device)
    with torch.no_grad():
        tokens = adapter(
            image_embeds.to(param.device, param.dtype),
            phrase_embeds[phrase_idx.to(phrase_embeds.device)].to(param.device, param.dtype),
            boxes.to(param.device, param.dtype),
            drop,
        )  # (R, Q, C)
    tokens = tokens.to(device, torch.float32)
    per_subject = torch.zeros(len(slots), *tokens.shape[1:], device=device)
    per_subject.index_add_(0, owner_t, tokens)
    counts = torch.bincount(owner_t, minlength=len(slots)).clamp(min=1)
    per_subject = per_subject / counts[:, None, None]  # (n_subjects, Q, C)

    # 4. pad into (B, S, ...)
    q, c = per_subject.shape[1:]
    padded = torch.zeros(batch, num_subjects, q, c, device=device)
    region_boxes = torch.zeros(batch, num_subjects, 4)
    scales = torch.zeros(batch, num_subjects)
    spans = torch.zeros(batch, num_subjects, 2, dtype=torch.long)
    has_mask = torch.zeros(batch, num_subjects, dtype=torch.bool)
    masks = torch.zeros(batch, num_subjects, *latent_size, dtype=torch.bool)
    for n, (i, j, s) in enumerate(slots):
        padded[i, j] = per_subject[n]
        region_boxes[i, j] = torch.tensor(s.region_box)
        scales[i, j] = s.scale
        spans[i, j] = torch.tensor(s.span)
        if s.mask is not None:
            has_mask[i, j] = True
            masks[i, j] = _masks_to_grid(s.mask, latent_size)

    def rows(t: torch.Tensor) -> torch.Tensor:  # prompt-major, as encode_prompt orders images
        return t.repeat_interleave(num_images_per_prompt, dim=0).to(device)

    any_mask = bool(has_mask.any())
    return MSConditioning(
        tokens=rows(padded).to(dtype),
        boxes=rows(region_boxes),
        scales=rows(scales).to(dtype),
        latent_size=latent_size,
        cond_start=cond_start,
        region_masks=rows(masks) if any_mask else None,
        has_mask=rows(has_mask) if any_mask else None,
        phrase_spans=rows(spans) if mask_threshold is not None else None,
        mask_threshold=mask_threshold,
        start_step=start_step,
    )
