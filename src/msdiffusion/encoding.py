"""The frozen encoders' side of subject encoding (DESIGN §2.1 steps 1–3), shared by inference,
training, data preparation and evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .errors import InputError, Location

REFERENCE_SIZE = 512  # references are squashed to 512×512 before the CLIP preprocessing

__all__ = [
    "load_image",
    "prepare_reference",
    "encode_references",
    "encode_phrases",
    "REFERENCE_SIZE",
]


def load_image(image: Any, argument: str | Location = "image") -> Image.Image:
    """A PIL image or a path → an RGB PIL image; a clear error for a missing or unreadable file."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise InputError(argument, "file does not exist", path)
        try:
            with Image.open(path) as handle:
                handle.load()
                return handle.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise InputError(
                argument, f"is not a readable image ({err.__class__.__name__})", path
            ) from None
    raise InputError(argument, "must be a PIL image or a path", type(image).__name__)


def prepare_reference(image: Image.Image) -> Image.Image:
    """RGB, resized to 512×512 (aspect ratio ignored, bicubic) — the released inference recipe."""
    image = load_image(image)
    return image.resize((REFERENCE_SIZE, REFERENCE_SIZE), Image.Resampling.BICUBIC)


@torch.no_grad()
def encode_references(
    images: Sequence[Image.Image], feature_extractor: Any, image_encoder: torch.nn.Module
) -> torch.Tensor:
    """Reference images → penultimate hidden states of the CLIP vision tower, ``(N, T, D_img)``.

    ``T`` = 257 and ``D_img`` = 1664 for CLIP ViT-bigG/14. The images may be already prepared (see
    ``prepare_reference``) or raw; they are prepared here either way (idempotent for 512² RGB).
    """
    prepared = [prepare_reference(im) for im in images]
    pixels = feature_extractor(
        images=prepared, return_tensors="pt"
    ).pixel_values  # (N, 3, 224, 224)
    param = next(image_encoder.parameters())
    return encode_pixels(pixels.to(param.device, param.dtype), image_encoder)


def encode_pixels(pixels: torch.Tensor, image_encoder: torch.nn.Module) -> torch.Tensor:
    """Preprocessed pixels ``(N, 3, s, s)`` → ``(N, T, D_img)`` penultimate hidden states."""
    out = image_encoder(pixels, output_hidden_states=True)
    return out.hidden_states[-2]


@torch.no_grad()
def encode_phrases(
    phrases: Sequence[str], tokenizer: Any, text_encoder: torch.nn.Module
) -> torch.Tensor:
    """Phrases → ``pooler_output`` of SDXL's first text encoder (CLIP ViT-L), ``(N, 768)``."""
    ids = tokenizer(
        list(phrases),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (N, 77)
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device)).pooler_output
