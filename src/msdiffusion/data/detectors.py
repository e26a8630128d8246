"""Open-vocabulary detection of caption phrases through transformers: Grounding DINO or OWLv2.

Both return, per image, ``Detection(box, score, phrase)`` with ``phrase`` indexing the phrases
given for that image and boxes normalised to the image (not to any padding).

* Grounding DINO reads the phrases as one prompt ``"dog . red ball ."``; a box's score for a phrase
  is its best token probability over the phrase's tokens (found with the tokenizer's offsets), and
  the box goes to its best phrase.
* OWLv2 scores every image patch's box against each phrase (one text query per phrase); its
  input and box geometry are ``msdiffusion.owlv2``'s (the scoring detector's too).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from PIL import Image

from ..geometry import clamp_box
from ..owlv2 import owlv2_boxes, owlv2_pixels
from .boxes import Detection

__all__ = ["Detector", "GroundingDinoDetector", "Owlv2Detector", "cxcywh_to_xyxy"]


class Detector(Protocol):
    """Anything that finds phrases in images."""

    def detect(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Detection]]:
        """``phrases[i]`` are looked for in ``images[i]``; all candidate boxes, any score."""
        ...


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(…, 4) centre/size boxes → corner boxes."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _to_model(inputs: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    param = next(model.parameters())
    return {
        k: (v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device))
        for k, v in inputs.items()
    }


class GroundingDinoDetector:
    """Grounding DINO (``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor``)."""

    def __init__(self, model: Any, processor: Any, *, top_k: int = 100):
        self.model, self.processor, self.top_k = model.eval(), processor, top_k

    @classmethod
    def load(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, **options: Any
    ) -> GroundingDinoDetector:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        model = AutoModelForZeroShotObjectDetection.from_pretrained(path, dtype=dtype)
        return cls(model.to(device), AutoProcessor.from_pretrained(path), **options)

    @staticmethod
    def prompt(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
        """The detector's text and each phrase's character span in it."""
        text, spans = "", []
        for phrase in phrases:
            start = len(text)
            text += phrase.lower()
            spans.append((start, len(text)))
            text += " . "
        return text.strip(), spans

    @torch.inference_mode()
    def detect(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Detection]]:
        if not images:
            return []
        prompts = [self.prompt(p) for p in phrases]
        max_len = int(getattr(self.model.config, "max_text_len", 256))
        text = self.processor.tokenizer(
            [t for t, _ in prompts],
            padding="longest",
            truncation=True,
            max_length=max_len,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = text.pop("offset_mapping")  # (B, T, 2) character spans of the tokens
        pixels = self.processor.image_processor(images, return_tensors="pt")
        out = self.model(**_to_model({**pixels, **text}, self.model))
        probs = out.logits.float().sigmoid().cpu()  # (B, Q, max_text_len)
        boxes = cxcywh_to_xyxy(out.pred_boxes.float().cpu())  # (B, Q, 4), of the unpadded image
        results = []
        t = offsets.shape[1]  # tokens of the longest prompt (≤ max_text_len)
        for b, (_, spans) in enumerate(prompts):
            starts, ends = offsets[b, :, 0], offsets[b, :, 1]  # (T,); special tokens are (0, 0)
            bounds = torch.tensor(spans, dtype=starts.dtype).reshape(-1, 2)  # (P, 2)
            member = (
                (starts[None] >= bounds[:, :1])
                & (ends[None] <= bounds[:, 1:])
                & (ends > starts)[None]
            )  # (P, T): token t belongs to phrase p
            alive = member.any(-1)  # (P,) phrases that survived truncation
            if not alive.any():
                results.append([])
                continue
            per_phrase = torch.where(member[None], probs[b, :, None, :t], 0.0)  # (Q, P, T)
            scores, best = per_phrase.amax(-1).max(-1)  # (Q,), (Q,): best phrase per box
            order = scores.argsort(descending=True, stable=True)[: self.top_k]
            results.append(
                [
                    Detection(clamp_box(boxes[b, q].tolist()), float(scores[q]), int(best[q]))
                    for q in order.tolist()
                    if alive[best[q]]
                ]
            )
        return results


class Owlv2Detector:
    """OWLv2 (``Owlv2ForObjectDetection``), one text query per phrase."""

    def __init__(self, model: Any, processor: Any, *, top_k: int = 100):
        self.model, self.processor, self.top_k = model.eval(), processor, top_k
        image_processor = processor.image_processor
        size = getattr(image_processor, "size", None) or {}
        self.side = int(size.get("height", model.config.vision_config.image_size))
        self.mean, self.std = image_processor.image_mean, image_processor.image_std

    @classmethod
    def load(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, **options: Any
    ) -> Owlv2Detector:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        model = AutoModelForZeroShotObjectDetection.from_pretrained(path, dtype=dtype)
        return cls(model.to(device), AutoProcessor.from_pretrained(path), **options)

    @torch.inference_mode()
    def detect(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Detection]]:
        if not images:
            return []
        width = max(1, max(len(p) for p in phrases))
        queries = [q for p in phrases for q in (list(p) + [""] * (width - len(p)))]  # (B·P,)
        max_len = int(self.model.config.text_config.max_position_embeddings)
        text = self.processor.tokenizer(
            queries, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        pixel_values = owlv2_pixels(images, self.side, self.mean, self.std)  # (B, 3, s, s)
        inputs = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values": pixel_values,
        }
        out = self.model(**_to_model(inputs, self.model))
        logits = out.logits.float().sigmoid().cpu()  # (B, patches, P)
        boxes = out.pred_boxes.float().cpu()  # (B, patches, 4) cx, cy, w, h of the square
        results = []
        for b, image in enumerate(images):
            n = len(phrases[b])
            if n == 0:
                results.append([])
                continue
            scores, best = logits[b, :, :n].max(-1)  # (patches,)
            xyxy = owlv2_boxes(boxes[b], image.size)  # (patches, 4) of the image
            order = scores.argsort(descending=True, stable=True)[: self.top_k]
            results.append(
                [
                    Detection(clamp_box(xyxy[q].tolist()), float(scores[q]), int(best[q]))
                    for q in order.tolist()
                ]
            )
        return results
