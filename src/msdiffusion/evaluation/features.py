"""Feature extractors for scoring (CLIP, DINO, OWLv2) and the reference-feature cache.

Each extractor loads its model once (``from_pretrained`` on a hub id or a local folder), batches
its inputs and returns float32 CPU tensors. Preprocessing:

- CLIP: the model's own image processor (for CLIP ViT-B/32: short side 224 bicubic, centre crop
  224, CLIP mean/std);
- DINO: ``"resize-crop"`` (default, common practice and DINO's own evaluation transform) resizes
  the short side to 8/7 of the model's input (256 for 224) with Pillow's bicubic filter, crops the
  centre to the input size and normalises with the processor's mean/std; ``"processor"`` uses the
  model's image processor instead (for ViTs: a bilinear squash to 224², aspect ratio lost);
- OWLv2: ``msdiffusion.owlv2``'s square padding (grey) and boxes, sizes and normalisation read
  from the model's ``preprocessor_config.json``.

Every extractor's ``info`` names its model, the SHA-256 of its weights (over the state dict:
names, shapes, dtypes, bytes — the same whatever folder or hub cache they were loaded from) and its
preprocessing; that identity keys the reference-feature cache and lets ``eval compare`` match
scorers.

Embeddings: CLIP image/text = the projected ``pooler_output`` (``get_image_features`` /
``get_text_features``); DINO = the CLS token of the last layer (``last_hidden_state[:, 0]``, the
DreamBooth protocol; works for DINO ViTs and DINOv2 alike).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_write_bytes
from ..errors import InputError
from ..geometry import nms
from ..owlv2 import owlv2_boxes, owlv2_pixels
from ..runtime import dtype_label, load_or_explain

__all__ = [
    "DEFAULT_MODELS",
    "DINO_PREPROCESSING",
    "ClipEmbedder",
    "Detection",
    "DinoEmbedder",
    "OwlDetector",
    "ReferenceCache",
    "resize_center_crop",
    "weights_sha256",
]

DEFAULT_MODELS = {
    "clip": "openai/clip-vit-base-patch32",
    "dino": "facebook/dino-vits16",
    "detector": "google/owlv2-base-patch16-ensemble",
}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_PREPROCESSING = ("resize-crop", "processor")
RESIZE_RATIO = 256 / 224  # resize the short side to this times the crop, then crop the centre


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence load reports (e.g. DINO checkpoints without the unused pooler) and per-file
    progress bars while loading."""
    from transformers.utils import logging as tlog

    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _load(loader: Any, model_id: str, role: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(model_id)`` with a clear error when it is not available."""

    def load() -> Any:
        with _quiet_transformers():
            return loader.from_pretrained(model_id, **kwargs)

    return load_or_explain(
        load,
        what=f"{role} model",
        source=model_id,
        fix=f"download it once (`hf download {model_id}`) or pass a local "
        f"folder with --{role}-model",
    )


def weights_sha256(model: torch.nn.Module, skip: Iterable[str] = ()) -> str:
    """SHA-256 over a model's state dict (sorted names, shapes, dtypes and raw bytes), leaving
    out the entries named in ``skip``."""
    digest = hashlib.sha256()
    skip = set(skip)
    for name, tensor in sorted(model.state_dict().items()):
        if name in skip:
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resize_center_crop(image: Image.Image, short: int, crop: int) -> Image.Image:
    """Short side to ``short`` (bicubic, aspect kept; the long side truncated as torchvision
    does), then the centre ``crop`` × ``crop`` (offsets rounded as torchvision does)."""
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in some transformers versions, an output in others."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


class _Extractor:
    """Common loading/identity for the three extractors."""

    role = ""

    def __init__(
        self,
        model_id: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ):
        self.model_id, self.device, self.dtype = model_id, device, dtype
        self.batch_size = batch_size
        self._random: set[str] = set()  # parameters the checkpoint lacks (initialised at random)
        model = self._load_model()
        self.weights = weights_sha256(model, skip=self._random)  # as loaded, before any cast
        self.model = model.to(device=device, dtype=dtype).eval()
        identity = json.dumps([self.weights, self.preprocessing, str(dtype)], sort_keys=True)
        self.fingerprint = hashlib.sha256(identity.encode()).hexdigest()

    def _load_model(self) -> Any:
        raise NotImplementedError

    def _load_weights(self, loader: Any) -> Any:
        """The network, noting which of its parameters the checkpoint did not have (e.g. the
        pooler of DINO checkpoints, unused here): random at each load, so not its identity."""
        model, info = _load(loader, self.model_id, self.role, output_loading_info=True)
        self._random = set(info.get("missing_keys") or ())
        return model

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How images become pixels: what decides the numbers besides the weights."""
        raise NotImplementedError

    @property
    def info(self) -> dict[str, Any]:
        """How the numbers were made: printed next to them in every report. ``identity`` is
        what ``eval compare`` matches (weights, preprocessing, dtype) — never the path."""
        dtype = dtype_label(self.dtype)
        return {
            "model": self.model_id,
            "class": type(self.model).__name__,
            "revision": getattr(self.model.config, "_commit_hash", None),
            "weights_sha256": self.weights,
            "fingerprint": self.fingerprint[:16],
            "preprocessing": self.preprocessing,
            "dtype": dtype,
            "identity": {
                "weights_sha256": self.weights,
                "preprocessing": self.preprocessing,
                "dtype": dtype,
            },
        }


def _plain(value: Any) -> Any:
    """A processor's size (a dict, or a transformers SizeDict dataclass) as a plain dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, dict) else value


def _processor_settings(processor: Any) -> dict[str, Any]:
    """The settings of a transformers image processor that change its pixels."""
    out: dict[str, Any] = {"backend": f"transformers {type(processor).__name__}"}
    for key in (
        "do_resize",
        "size",
        "resample",
        "do_center_crop",
        "crop_size",
        "image_mean",
        "image_std",
    ):
        value = getattr(processor, key, None)
        value = _plain(value)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        elif key == "resample" and value is not None:
            value = Image.Resampling(int(value)).name.lower()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


class _ImageEmbedder(_Extractor):
    def _load_model(self) -> Any:
        from transformers import AutoImageProcessor

        self.processor = _load(AutoImageProcessor, self.model_id, self.role)
        return self._load_network()

    def _load_network(self) -> Any:
        raise NotImplementedError

    def _embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def preprocessing(self) -> dict[str, Any]:
        return _processor_settings(self.processor)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N,) images -> (N, 3, H, W) model input."""
        return self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N,) images -> (N, D) float32 CPU embeddings (not normalised)."""
        out = []
        for chunk in _batches(list(images), self.batch_size):
            pixels = self.pixels(chunk)
            out.append(self._embed_pixels(pixels.to(self.device, self.dtype)).float().cpu())
        dim = out[0].shape[-1] if out else 0
        return torch.cat(out) if out else torch.empty(0, dim)


class ClipEmbedder(_ImageEmbedder):
    """CLIP image and text embeddings (CLIP-T, CLIP-I). Default ``openai/clip-vit-base-patch32``."""

    role = "clip"

    def _load_network(self) -> Any:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = _load(AutoTokenizer, self.model_id, self.role)
        return self._load_weights(AutoModel)

    def _embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) prompts -> (N, D) float32 CPU embeddings; prompts longer than the text encoder's
        context (77 tokens for CLIP) are truncated, as in every CLIP-T implementation."""
        limit = self.model.config.text_config.max_position_embeddings
        out = []
        for chunk in _batches(list(texts), self.batch_size):
            tokens = self.tokenizer(
                list(chunk), padding=True, truncation=True, max_length=limit, return_tensors="pt"
            ).to(self.device)
            out.append(_features(self.model.get_text_features(**tokens)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


class DinoEmbedder(_ImageEmbedder):
    """Self-supervised ViT CLS embeddings (DINO). Default ``facebook/dino-vits16``.

    ``preprocessing``: ``"resize-crop"`` (default) or ``"processor"`` (module docstring).
    """

    role = "dino"

    def __init__(self, model_id: str, *, preprocessing: str = "resize-crop", **kwargs: Any):
        if preprocessing not in DINO_PREPROCESSING:
            raise InputError(
                "dino_preprocessing",
                f"must be one of {', '.join(DINO_PREPROCESSING)}",
                preprocessing,
            )
        self.mode = preprocessing
        super().__init__(model_id, **kwargs)

    def _load_network(self) -> Any:
        from transformers import AutoModel

        return self._load_weights(AutoModel)

    def _crop_size(self) -> int:
        size = _plain(getattr(self.processor, "crop_size", None) or self.processor.size)
        size = size if isinstance(size, dict) else {"height": size}
        return int(size.get("height") or size.get("shortest_edge"))

    @property
    def preprocessing(self) -> dict[str, Any]:
        if self.mode == "processor":
            return {"mode": "processor", **super().preprocessing}
        crop = self._crop_size()
        return {
            "mode": "resize-crop",
            "backend": "pillow",
            "resize_short_side": round(crop * RESIZE_RATIO),
            "resample": "bicubic",
            "center_crop": crop,
            "image_mean": list(self.processor.image_mean),
            "image_std": list(self.processor.image_std),
        }

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self.mode == "processor":
            return super().pixels(images)
        crop = self._crop_size()
        mean = np.asarray(self.processor.image_mean, np.float32)
        std = np.asarray(self.processor.image_std, np.float32)
        batch = []
        for im in images:
            im = resize_center_crop(im.convert("RGB"), round(crop * RESIZE_RATIO), crop)
            arr = (np.asarray(im, dtype=np.float32) / 255.0 - mean) / std  # (crop, crop, 3)
            batch.append(torch.from_numpy(arr).permute(2, 0, 1))  # (3, crop, crop)
        return torch.stack(batch)

    def _embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]  # (B, D) CLS token


# ----------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class Detection:
    """A detected box (normalised xyxy of the image) and its score (sigmoid of the class logit)."""

    box: tuple[float, float, float, float]
    score: float


class OwlDetector(_Extractor):
    """Open-vocabulary detection with OWLv2. Default ``google/owlv2-base-patch16-ensemble``.

    Queries are ``query_template.format(phrase)`` ("a photo of a dog").
    """

    role = "detector"

    def __init__(
        self,
        model_id: str,
        *,
        query_template: str = "a photo of a {}",
        nms_iou: float = 0.5,
        **kwargs: Any,
    ):
        self.query_template, self.nms_iou = query_template, nms_iou
        super().__init__(model_id, **kwargs)

    def _load_model(self) -> Any:
        from transformers import AutoTokenizer, Owlv2ForObjectDetection

        self.tokenizer = _load(AutoTokenizer, self.model_id, self.role)
        model = self._load_weights(Owlv2ForObjectDetection)
        cfg: dict[str, Any] = {}
        local = Path(self.model_id) / "preprocessor_config.json"
        try:
            if local.is_file():
                cfg = json.loads(local.read_text())
            else:
                from huggingface_hub import hf_hub_download

                cfg = json.loads(
                    Path(hf_hub_download(self.model_id, "preprocessor_config.json")).read_text()
                )
        except Exception:  # noqa: BLE001 - fall back to the model's own input size
            cfg = {}
        size = cfg.get("size", {})
        self.image_size = int(
            size.get("height", model.config.vision_config.image_size)
            if isinstance(size, dict)
            else size
        )
        self.mean = tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN))
        self.std = tuple(cfg.get("image_std", OPENAI_CLIP_STD))
        return model

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "backend": "pillow",
            "steps": "pad to a square (bottom/right, grey), bilinear resize, normalise",
            "input_size": self.image_size,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }

    @property
    def info(self) -> dict[str, Any]:
        info = super().info
        info["identity"]["query_template"] = self.query_template
        return {**info, "query_template": self.query_template, "input_size": self.image_size}

    @torch.inference_mode()
    def detect(
        self,
        images: Sequence[Image.Image],
        phrases: Sequence[Sequence[str]],
        top_k: Sequence[Sequence[int]] | None = None,
    ) -> list[list[list[Detection]]]:
        """For image i and phrase j: up to ``top_k[i][j]`` (default 1) detections of the phrase,
        best first, after non-maximum suppression. Never empty: the best box is returned even when
        its score is low (the caller reports low scores)."""
        results: list[list[list[Detection]]] = []
        limit = self.model.config.text_config.max_position_embeddings
        for start in range(0, len(images), self.batch_size):
            ims = list(images[start : start + self.batch_size])
            qs = [list(p) for p in phrases[start : start + self.batch_size]]
            n_queries = max(1, max(len(q) for q in qs))
            pixels = owlv2_pixels(ims, self.image_size, self.mean, self.std)
            texts = [self.query_template.format(p) for q in qs for p in q]
            tokens = self.tokenizer(
                texts, padding="max_length", truncation=True, max_length=limit, return_tensors="pt"
            )
            # (B * n_queries, L): each image's queries, padded with all-zero rows (masked by OWLv2)
            ids = torch.zeros(len(ims) * n_queries, limit, dtype=torch.long)
            mask = torch.zeros_like(ids)
            row = 0
            for i, q in enumerate(qs):
                for j in range(len(q)):
                    ids[i * n_queries + j] = tokens["input_ids"][row]
                    mask[i * n_queries + j] = tokens["attention_mask"][row]
                    row += 1
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                pixel_values=pixels.to(self.device, self.dtype),
            )
            scores = torch.sigmoid(out.logits.float()).cpu()  # (B, P, n_queries)
            boxes = out.pred_boxes.float().cpu()  # (B, P, 4) cx, cy, w, h of the padded square
            for i, (im, q) in enumerate(zip(ims, qs, strict=True)):
                results.append(
                    [
                        self._best(
                            boxes[i],
                            scores[i, :, j],
                            im.size,
                            (top_k[start + i][j] if top_k else 1),
                        )
                        for j in range(len(q))
                    ]
                )
        return results

    def _best(
        self, boxes: torch.Tensor, scores: torch.Tensor, size: tuple[int, int], k: int
    ) -> list[Detection]:
        xyxy = owlv2_boxes(boxes, size)  # (P, 4) normalised to the image
        top = torch.argsort(scores, descending=True)[: max(20, 4 * k)]
        kept = nms(xyxy[top], scores[top], self.nms_iou)[:k]
        return [
            Detection(tuple(float(v) for v in xyxy[top[i]]), float(scores[top[i]])) for i in kept
        ]


# ----------------------------------------------------------------------------------------------
# Reference cache


class ReferenceCache:
    """Embeddings of reference images, keyed by file content, one safetensors file per model.

    References are few and shared by many samples (and runs): each is embedded once per model;
    ``cache_dir`` may be shared between runs (``--cache-dir``). The file's key is the extractor's
    fingerprint — weights, preprocessing and dtype — so other preprocessing never reads stale
    features.
    """

    def __init__(self, cache_dir: str | Path | None):
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def _file(self, extractor: _Extractor) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{extractor.role}-{extractor.fingerprint[:16]}.safetensors"

    def embed(
        self, extractor: _ImageEmbedder, paths: Sequence[Path], load: Any
    ) -> dict[Path, torch.Tensor]:
        """Embeddings of ``paths`` (``load(path) -> PIL``), computing only those not cached."""
        from safetensors.torch import load_file, save

        file = self._file(extractor)
        stored = load_file(str(file)) if file is not None and file.exists() else {}
        keys = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
        todo = sorted({k: p for p, k in keys.items() if k not in stored}.items())
        if todo:
            feats = extractor.embed_images([load(p) for _, p in todo])
            stored.update({k: feats[i].contiguous() for i, (k, _) in enumerate(todo)})
            if file is not None:
                atomic_write_bytes(
                    file,
                    save(
                        stored,
                        metadata={
                            "model": extractor.model_id,
                            "preprocessing": json.dumps(extractor.preprocessing, sort_keys=True),
                        },
                    ),
                )
        return {p: stored[k] for p, k in keys.items()}
