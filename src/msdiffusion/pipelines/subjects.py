"""Subjects of a pipeline call → ``MSConditioning``: encode every reference image and phrase of
the checked layouts (``layout.validate_layout``) in one batch each, resample, pad, and compute
every layer's subject K/V and every grid's masks once, before the first step.

Padding: different subject counts per prompt are fine (padding is marked invalid and never
attended), and the subject count is padded up to a power of two (1, 2, 4, 8, …), so a compiled
UNet (``torch.compile``) sees a few shapes, not one per subject count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..conditioning import MSConditioning
from ..encoding import encode_phrases, encode_references, load_image
from ..layout import SubjectLayout

__all__ = [
    "SubjectEncoders",
    "ConditioningSettings",
    "subject_bucket",
    "mask_to_grid",
    "build_conditioning",
]


class SubjectEncoders(Protocol):
    """What encodes subjects: the adapter and the frozen encoders (a pipeline has them all)."""

    adapter: torch.nn.Module
    image_encoder: torch.nn.Module
    feature_extractor: Any
    tokenizer: Any
    text_encoder: torch.nn.Module


@dataclass(frozen=True)
class ConditioningSettings:
    """The call's geometry and options that shape its ``MSConditioning``."""

    latent_size: tuple[int, int]  # (H, W) of the UNet's input latent
    num_images_per_prompt: int
    cond_start: int  # first UNet batch row of the conditioned half
    dtype: torch.dtype  # the UNet's: the subject K/V are kept in it
    device: torch.device
    drop_grounding_tokens: bool = False
    mask_threshold: float | None = None
    start_step: int = 0
    levels: int = 4  # UNet levels whose grids get their masks before the first step


def subject_bucket(count: int) -> int:
    """The padded subject count: the next power of two (1, 2, 4, 8, ...)."""
    return 1 << max(count - 1, 0).bit_length()


def mask_to_grid(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """bool (h, w) → bool (H, W): a cell is inside when any mask pixel in it is (max-pool)."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]  # (1, 1, h, w)
    if tensor.shape[-2] < size[0] or tensor.shape[-1] < size[1]:
        tensor = F.interpolate(tensor, size=size, mode="nearest")
    return F.adaptive_max_pool2d(tensor, size)[0, 0] > 0.5


def build_conditioning(
    layouts: list[list[SubjectLayout]], encoders: SubjectEncoders, settings: ConditioningSettings
) -> MSConditioning | None:
    """Encode and pad the subjects of a batch; None when no subject has a non-zero scale."""
    adapter, latent_size, device = encoders.adapter, settings.latent_size, settings.device
    batch = len(layouts)
    most = max((len(row) for row in layouts), default=0)
    if most == 0 or all(s.scale == 0 for row in layouts for s in row):
        return None  # the image branch would add exactly 0 everywhere
    num_subjects = subject_bucket(most)

    # 1. flatten: every reference image, with its subject's slot and grounding
    refs, owner, slots = [], [], []
    for i, row in enumerate(layouts):
        for j, s in enumerate(row):
            for k, image in enumerate(s.subject.images):
                refs.append(load_image(image, ("subjects", i, j, "image", k)))
                owner.append(len(slots))
            slots.append((i, j, s))
    phrases = sorted({s.subject.phrase for _, _, s in slots})

    # 2. frozen encoders, one batch each
    image_embeds = encode_references(  # (R, T, D_img)
        refs, encoders.feature_extractor, encoders.image_encoder, device
    )
    phrase_embeds = encode_phrases(  # (P, D_phrase)
        phrases, encoders.tokenizer, encoders.text_encoder, device
    )
    owner_t = torch.tensor(owner, device=device)
    phrase_idx = torch.tensor([phrases.index(slots[o][2].subject.phrase) for o in owner])
    boxes = torch.tensor([slots[o][2].box for o in owner], dtype=torch.float32)  # (R, 4)

    # 3. resample every reference; a subject's tokens are the mean over its references
    dtype = adapter.dtype  # its weights may sit on the CPU or the meta device under offload
    drop = torch.full((len(refs),), settings.drop_grounding_tokens, device=device)
    with torch.no_grad():
        tokens = adapter(
            image_embeds.to(device, dtype),
            phrase_embeds[phrase_idx.to(phrase_embeds.device)].to(device, dtype),
            boxes.to(device, dtype),
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
    valid = torch.zeros(batch, num_subjects, dtype=torch.bool)
    spans = torch.zeros(batch, num_subjects, 2, dtype=torch.long)
    has_mask = torch.zeros(batch, num_subjects, dtype=torch.bool)
    masks = torch.zeros(batch, num_subjects, *latent_size, dtype=torch.bool)
    for n, (i, j, s) in enumerate(slots):
        padded[i, j] = per_subject[n]
        region_boxes[i, j] = torch.tensor(s.region_box)
        scales[i, j] = s.scale
        valid[i, j] = True
        spans[i, j] = torch.tensor(s.span)
        if s.mask is not None:
            has_mask[i, j] = True
            masks[i, j] = mask_to_grid(s.mask, latent_size)

    def rows(t: torch.Tensor) -> torch.Tensor:  # prompt-major, as encode_prompt orders images
        return t.repeat_interleave(settings.num_images_per_prompt, dim=0).to(device)

    any_mask = bool(has_mask.any())
    ms = MSConditioning(
        tokens=rows(padded).to(dtype),
        boxes=rows(region_boxes),
        scales=rows(scales).to(dtype),
        latent_size=latent_size,
        cond_start=settings.cond_start,
        valid=rows(valid),
        region_masks=rows(masks) if any_mask else None,
        has_mask=rows(has_mask) if any_mask else None,
        phrase_spans=rows(spans) if settings.mask_threshold is not None else None,
        mask_threshold=settings.mask_threshold,
        start_step=settings.start_step,
    )
    # 5. every layer's subject K/V (the adapter's projections, while it is on the device) and the
    # box masks of every grid: the denoising steps only read them
    with torch.no_grad():
        ms.precompute(adapter.layer_projections(), settings.levels, settings.dtype)
    return ms
