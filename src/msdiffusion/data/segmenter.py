"""Reference masks: SAM (transformers ``SamModel``) prompted with the subject's box.

The training recipe multiplies a reference crop by its subject's mask, so the adapter sees the
subject, not its surroundings. One mask per box, the size of the image it was computed on.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..geometry import Box

__all__ = ["Segmenter", "SamSegmenter"]


class Segmenter(Protocol):
    """Anything that segments boxed objects."""

    def segment(self, images: list[Image.Image], boxes: list[list[Box]]) -> list[list[np.ndarray]]:
        """``boxes[i]`` (normalised) in ``images[i]`` → one (H, W) bool mask per box."""
        ...


class SamSegmenter:
    """``SamModel`` + ``SamProcessor``, single-mask output per box prompt."""

    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model.eval(), processor

    @classmethod
    def load(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, **options: Any
    ) -> SamSegmenter:
        from transformers import AutoProcessor, SamModel

        model = SamModel.from_pretrained(path, dtype=dtype)
        return cls(model.to(device), AutoProcessor.from_pretrained(path), **options)

    @torch.inference_mode()
    def segment(self, images: list[Image.Image], boxes: list[list[Box]]) -> list[list[np.ndarray]]:
        results: list[list[np.ndarray]] = [[] for _ in images]
        todo = [i for i, b in enumerate(boxes) if b]
        if not todo:
            return results
        # SamProcessor needs the same number of boxes per image: pad by repeating the last box.
        width = max(len(boxes[i]) for i in todo)
        prompts = []
        for i in todo:
            w, h = images[i].size
            pixel = [[b[0] * w, b[1] * h, b[2] * w, b[3] * h] for b in boxes[i]]
            prompts.append(pixel + [pixel[-1]] * (width - len(pixel)))
        inputs = self.processor(
            images=[images[i] for i in todo], input_boxes=prompts, return_tensors="pt"
        )
        param = next(self.model.parameters())
        model_inputs = {
            "pixel_values": inputs["pixel_values"].to(param.device, param.dtype),
            "input_boxes": inputs["input_boxes"].to(param.device, param.dtype),
        }
        out = self.model(**model_inputs, multimask_output=False)
        masks = self.processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        for k, i in enumerate(todo):
            per_box = masks[k][:, 0].numpy().astype(bool)  # (width, H, W)
            results[i] = [per_box[j] for j in range(len(boxes[i]))]
        return results
