"""The four models of a build, loaded once per process.

``kind`` of each ``ModelSpec`` picks the wrapper: ``blip`` (any transformers image-to-text model),
``grounding_dino`` / ``owlv2`` / ``auto`` (by the checkpoint's model type), ``sam``, ``auto``
(features: CLIP, DINOv2, ...). ``module:attribute`` plugs in your own: a callable taking
``(path, device, dtype, **options)`` and returning an object with the same method (``caption``,
``detect``, ``segment`` or ``embed``). A missing model is a ``ModelNotAvailableError`` naming it.
``preset: random-tiny | random-base`` replaces all four with random-weight models
(``random_models``, from ``msdiffusion.testing.data_models``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..runtime import load_or_explain, resolve_dtype
from ..testing.data_models import random_model
from .captioner import Captioner, HFCaptioner
from .config import ModelsConfig, ModelSpec
from .detectors import Detector, GroundingDinoDetector, Owlv2Detector
from .features import FeatureEncoder, HFFeatureEncoder
from .segmenter import SamSegmenter, Segmenter

__all__ = ["Models", "load_models", "load_one", "random_models"]


@dataclass
class Models:
    """What a build runs. None: no captioner (sidecar captions only), no features (image-only
    input needs none), no segmenter (``reference_mask: null``)."""

    captioner: Captioner | None
    detector: Detector
    features: FeatureEncoder | None
    segmenter: Segmenter | None = None
    batch_size: int = 8


def _detector_auto(path: str, device: Any, dtype: torch.dtype, **options: Any) -> Detector:
    from transformers import AutoConfig

    model_type = _guard("detector", path, lambda: AutoConfig.from_pretrained(path)).model_type
    if model_type in ("grounding-dino", "mm-grounding-dino"):
        return GroundingDinoDetector.load(path, device, dtype, **options)
    if model_type in ("owlv2",):
        return Owlv2Detector.load(path, device, dtype, **options)
    raise InputError(
        "config.models.detector.kind",
        "auto works for grounding-dino and owlv2 checkpoints",
        model_type,
    )


FACTORIES: dict[str, dict[str, Callable[..., Any]]] = {
    "captioner": {"blip": HFCaptioner.load, "auto": HFCaptioner.load},
    "detector": {
        "grounding_dino": GroundingDinoDetector.load,
        "owlv2": Owlv2Detector.load,
        "auto": _detector_auto,
    },
    "segmenter": {"sam": SamSegmenter.load},
    "features": {
        "auto": HFFeatureEncoder.load,
        "clip": HFFeatureEncoder.load,
        "dinov2": HFFeatureEncoder.load,
    },
}


def _guard(role: str, path: str | None, load: Callable[[], Any]) -> Any:
    return load_or_explain(
        load,
        what=f"{role} model",
        source=path,
        fix=f"set config.models.{role}.path to a local folder, or a hub id in the local cache",
    )


def load_one(role: str, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Any:
    """Build one model from its spec (see the module docstring for the kinds)."""
    if ":" in spec.kind:
        module, _, attr = spec.kind.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise InputError(
                f"config.models.{role}.kind", f"cannot import ({err})", spec.kind
            ) from None
    else:
        known = FACTORIES[role]
        if spec.kind not in known:
            raise InputError(
                f"config.models.{role}.kind",
                f"one of {', '.join(sorted(known))} or module:attribute",
                spec.kind,
            )
        factory = known[spec.kind]
        if not spec.path:
            raise InputError(
                f"config.models.{role}.path", "a hub id or a folder is needed", spec.path
            )
    return _guard(role, spec.path, lambda: factory(spec.path, device, dtype, **spec.options))


def load_models(
    cfg: ModelsConfig, device: torch.device | str, *, need_features: bool = True
) -> Models:
    """Load the configured models onto ``device`` (features only if ``need_features``)."""
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.preset is not None:
        detector = cfg.detector.kind if cfg.detector.kind == "owlv2" else "grounding_dino"
        return random_models(
            cfg.preset.removeprefix("random-"),
            detector=detector,
            segmenter=cfg.segmenter is not None,
            device=device,
            dtype=dtype,
            batch_size=cfg.batch_size,
        )
    return Models(
        captioner=None
        if cfg.captioner is None
        else load_one("captioner", cfg.captioner, device, dtype),
        detector=load_one("detector", cfg.detector, device, dtype),
        features=load_one("features", cfg.features, device, dtype) if need_features else None,
        segmenter=None
        if cfg.segmenter is None
        else load_one("segmenter", cfg.segmenter, device, dtype),
        batch_size=cfg.batch_size,
    )


def random_models(
    size: str = "tiny",
    *,
    seed: int = 0,
    detector: str = "grounding_dino",
    features: str = "dinov2",
    segmenter: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    max_new_tokens: int = 20,
) -> Models:
    """All four pipeline models with random weights, in memory (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        def build(name: str) -> tuple[Any, Any]:
            model, processor = random_model(name, size)
            return model.to(device, dtype), processor

        captioner = HFCaptioner(*build("blip"), max_new_tokens=max_new_tokens)
        detector_class = {"grounding_dino": GroundingDinoDetector, "owlv2": Owlv2Detector}
        found = detector_class[detector](*build(detector))
        model, processor = build(features)
        encoder = HFFeatureEncoder(model, getattr(processor, "image_processor", processor))
        sam = SamSegmenter(*build("sam")) if segmenter else None
    return Models(
        captioner=captioner, detector=found, features=encoder, segmenter=sam, batch_size=batch_size
    )
