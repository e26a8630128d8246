"""The frozen encoders' side of subject encoding (DESIGN §2.1 steps 1–3), shared by inference,
training, data preparation and evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import InputError, Location

REFERENCE_SIZE = 512  # references are squashed to 512×512 before the CLIP preprocessing

__all__ = [
    "clip_preprocessing",
    "open_image",
    "to_rgb",
    "load_image",
    "prepare_reference",
    "encode_references",
    "encode_phrases",
    "REFERENCE_SIZE",
]


PREPROCESSOR_CONFIG = "preprocessor_config.json"


def clip_preprocessing(
    image_encoder: torch.nn.Module, folder: str | os.PathLike[str] | None = None
) -> Any:
    """The image encoder's CLIP preprocessing — one rule for inference, training and evaluation:
    the ``preprocessor_config.json`` saved with the encoder (``folder``) when there is one, else
    CLIP's (resize and centre-crop to the encoder's own image size, CLIP mean and std; 224 for
    ViT-bigG/14)."""
    from transformers import CLIPImageProcessorPil

    if folder is not None and os.path.isfile(os.path.join(folder, PREPROCESSOR_CONFIG)):
        return CLIPImageProcessorPil.from_pretrained(os.fspath(folder))
    side = image_encoder.config.image_size
    return CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )


def open_image(image: Any, argument: str | Location = "image") -> Image.Image:
    """A PIL image or a path → a loaded PIL image in its own mode (alpha and bit depth kept); a
    clear error for a missing or unreadable file."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise InputError(argument, "file does not exist", path)
        try:
            with Image.open(path) as handle:
                handle.load()
                return handle.copy()
        except Exception as err:  # any decoder failure on these bytes (a decompression bomb, …)
            raise InputError(
                argument, f"is not a readable image ({err.__class__.__name__})", path
            ) from None
    raise InputError(argument, "must be a PIL image or a path", type(image).__name__)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16-bit (and 32-bit integer) grey levels scaled to 8 bits — PIL's own conversion
    clips them, turning a 16-bit picture white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L: 16 bits; I: 32-bit integers
        levels = np.asarray(image, dtype=np.float64)
        peak = float(levels.max(initial=0))
        top = 65535.0 if image.mode != "I" or 255 < peak <= 65535 else max(peak, 255.0)
        grey = np.clip(np.round(levels / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def load_image(image: Any, argument: str | Location = "image") -> Image.Image:
    """A PIL image or a path → an RGB PIL image (``open_image`` + ``to_rgb``)."""
    return to_rgb(open_image(image, argument))


def prepare_reference(image: Image.Image) -> Image.Image:
    """RGB, resized to 512×512 (aspect ratio ignored, bicubic) — the released inference recipe."""
    image = load_image(image)
    return image.resize((REFERENCE_SIZE, REFERENCE_SIZE), Image.Resampling.BICUBIC)


@torch.no_grad()
def encode_references(
    images: Sequence[Image.Image],
    feature_extractor: Any,
    image_encoder: torch.nn.Module,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Reference images → penultimate hidden states of the CLIP vision tower, ``(N, T, D_img)``.

    ``T`` = 257 and ``D_img`` = 1664 for CLIP ViT-bigG/14. The images may be already prepared (see
    ``prepare_reference``) or raw; they are prepared here either way (idempotent for 512² RGB).
    ``device``: where the encoder runs (default: where its weights are; under CPU offload the
    pipeline's execution device).
    """
    prepared = [prepare_reference(im) for im in images]
    pixels = feature_extractor(
        images=prepared, return_tensors="pt"
    ).pixel_values  # (N, 3, 224, 224)
    param = next(image_encoder.parameters())
    return encode_pixels(pixels.to(device or param.device, param.dtype), image_encoder)


def encode_pixels(pixels: torch.Tensor, image_encoder: torch.nn.Module) -> torch.Tensor:
    """Preprocessed pixels ``(N, 3, s, s)`` → ``(N, T, D_img)`` penultimate hidden states."""
    out = image_encoder(pixels, output_hidden_states=True)
    return out.hidden_states[-2]


@torch.no_grad()
def encode_phrases(
    phrases: Sequence[str],
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Phrases → ``pooler_output`` of SDXL's first text encoder (CLIP ViT-L), ``(N, 768)``."""
    ids = tokenizer(
        list(phrases),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (N, 77)
    device = device or next(text_encoder.parameters()).device
    return text_encoder(ids.to(device)).pooler_output
