"""Captioning target frames with an image-to-text model (BLIP by default) through transformers.

Any model that ``AutoModelForImageTextToText`` loads and whose processor takes ``images=`` works
(BLIP, BLIP-2, GIT, ...). Decoding is greedy (or beam search), never sampled: a caption depends
only on the image, which keeps builds deterministic.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from PIL import Image

__all__ = ["Captioner", "HFCaptioner"]


class Captioner(Protocol):
    """Anything that captions a batch of RGB images."""

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, same order."""
        ...


class HFCaptioner:
    """A transformers image-to-text model + its processor.

    ``prompt`` (optional) conditions the caption (BLIP: ``"a photograph of"``); it is removed from
    the start of the output.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        prompt: str | None = None,
    ):
        self.model, self.processor = model.eval(), processor
        self.max_new_tokens, self.num_beams, self.prompt = max_new_tokens, num_beams, prompt

    @classmethod
    def load(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, **options: Any
    ) -> HFCaptioner:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        return cls(model.to(device), AutoProcessor.from_pretrained(path), **options)

    @torch.inference_mode()
    def caption(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt")
        param = next(self.model.parameters())
        inputs = {
            k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
            for k, v in inputs.items()
        }
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
        )
        captions = []
        for text_out in self.processor.batch_decode(out, skip_special_tokens=True):
            text_out = " ".join(text_out.split())
            if self.prompt and text_out.lower().startswith(self.prompt.lower()):
                text_out = text_out[len(self.prompt) :].strip()
            captions.append(text_out)
        return captions
