"""Subjects of a pipeline call → ``MSConditioning``: encode every reference image and phrase of
the checked layouts (``layout.validate_layout``) in one batch each, resample, and pad per batch
(different subject counts per prompt are fine: padding gets scale 0 and no region, so it never
reaches the attention).
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

__all__ = ["SubjectEncoders", "ConditioningSettings", "build_conditioning"]


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
    dtype: torch.dtype
    device: torch.device
    drop_grounding_tokens: bool = False
    mask_threshold: float | None = None
    start_step: int = 0


def _masks_to_grid(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
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
    num_subjects = max((len(row) for row in layouts), default=0)
    if num_subjects == 0 or all(s.scale == 0 for row in layouts for s in row):
        return None

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
        refs, encoders.feature_extractor, encoders.image_encoder
    )
    phrase_embeds = encode_phrases(  # (P, D_phrase)
        phrases, encoders.tokenizer, encoders.text_encoder
    )
    owner_t = torch.tensor(owner, device=device)
    phrase_idx = torch.tensor([phrases.index(slots[o][2].subject.phrase) for o in owner])
    boxes = torch.tensor([slots[o][2].box for o in owner], dtype=torch.float32)  # (R, 4)

    # 3. resample every reference; a subject's tokens are the mean over its references
    param = next(adapter.parameters())
    drop = torch.full((len(refs),), settings.drop_grounding_tokens, device=param.device)
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
        return t.repeat_interleave(settings.num_images_per_prompt, dim=0).to(device)

    any_mask = bool(has_mask.any())
    return MSConditioning(
        tokens=rows(padded).to(settings.dtype),
        boxes=rows(region_boxes),
        scales=rows(scales).to(settings.dtype),
        latent_size=latent_size,
        cond_start=settings.cond_start,
        region_masks=rows(masks) if any_mask else None,
        has_mask=rows(has_mask) if any_mask else None,
        phrase_spans=rows(spans) if settings.mask_threshold is not None else None,
        mask_threshold=settings.mask_threshold,
        start_step=settings.start_step,
    )
