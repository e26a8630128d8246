"""Appearance features for matching a subject across frames: CLIP or DINOv2 through transformers.

Any vision model works: CLIP-family checkpoints give their projected ``image_embeds``, others
(DINOv2, ViT, ...) their pooled output (or the first token). Features are L2-normalised, so the
dot product of two of them is their cosine similarity.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from PIL import Image

__all__ = ["FeatureEncoder", "HFFeatureEncoder"]

_CLIP_TYPES = ("clip", "clip_vision_model")


class FeatureEncoder(Protocol):
    """Anything that embeds image crops."""

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) float32, L2-normalised, on the CPU."""
        ...


class HFFeatureEncoder:
    """A transformers vision model + its image processor."""

    def __init__(self, model: Any, image_processor: Any):
        self.model, self.image_processor = model.eval(), image_processor

    @classmethod
    def load(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, **options: Any
    ) -> HFFeatureEncoder:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        config = AutoConfig.from_pretrained(path)
        if config.model_type in _CLIP_TYPES:
            from transformers import CLIPVisionModelWithProjection as model_class
        else:
            model_class = AutoModel
        model = model_class.from_pretrained(path, dtype=dtype)
        return cls(model.to(device), AutoImageProcessor.from_pretrained(path), **options)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.zeros(0, 0)
        param = next(self.model.parameters())
        pixels = self.image_processor(images, return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(param.device, param.dtype))
        features = getattr(out, "image_embeds", None)
        if features is None:
            features = getattr(out, "pooler_output", None)
        if features is None:
            features = out.last_hidden_state[:, 0]
        features = features.float().reshape(len(images), -1)  # (N, D)
        return torch.nn.functional.normalize(features, dim=-1).cpu()
