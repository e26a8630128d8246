"""The four models of a build, loaded once per process.

``kind`` of each ``ModelSpec`` picks the wrapper: ``blip`` (any transformers image-to-text model),
``grounding_dino`` / ``owlv2`` / ``auto`` (by the checkpoint's model type), ``sam``, ``auto``
(features: CLIP, DINOv2, ...). ``module:attribute`` plugs in your own: a callable taking
``(path, device, dtype, **options)`` and returning an object with the same method (``caption``,
``detect``, ``segment`` or ``embed``). A missing model is a ``ModelNotAvailableError`` naming it.
``preset: random-tiny | random-base | random-default`` replaces all four with random-weight
models (``random_models``, from ``msdiffusion.testing.data_models``). A Ray actor loads only its
stage's model (``load_stage_models``).
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

__all__ = [
    "Models",
    "ROLES",
    "load_models",
    "load_one",
    "load_stage_models",
    "check_specs",
    "random_models",
    "random_role",
]

ROLES = ("captioner", "detector", "features", "segmenter")


@dataclass
class Models:
    """What a build runs. None: no captioner (sidecar captions only), no features (image-only
    input needs none), no segmenter (``reference_mask: null``); a model stage's actor holds only
    its own model (``load_stage_models``)."""

    captioner: Captioner | None = None
    detector: Detector | None = None
    features: FeatureEncoder | None = None
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


def check_specs(
    cfg: ModelsConfig, roles: tuple[str, ...] = ROLES, *, loadable: bool = True
) -> None:
    """Fail fast, before any input is processed, on a model kind that names nothing: an unknown
    wrapper, a missing path, or a ``module:attribute`` plug-in that does not import here; with
    ``loadable``, also on a model that is not there (``check_available``)."""
    if cfg.preset is not None:
        return
    for role in roles:
        spec = getattr(cfg, role)
        if spec is None:
            continue
        if ":" in spec.kind:
            module, _, attr = spec.kind.partition(":")
            try:
                getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise InputError(
                    f"config.models.{role}.kind", f"cannot import ({err})", spec.kind
                ) from None
        elif spec.kind not in FACTORIES[role]:
            raise InputError(
                f"config.models.{role}.kind",
                f"one of {', '.join(sorted(FACTORIES[role]))} or module:attribute",
                spec.kind,
            )
        elif not spec.path:
            raise InputError(
                f"config.models.{role}.path", "a hub id or a folder is needed", spec.path
            )
        elif loadable:
            check_available(role, spec.path)


def check_available(role: str, path: str) -> None:
    """A model that cannot load is said before the build starts (no folder there; offline and
    not in the hub cache) — not by a worker after the dataset folder was claimed."""
    import os

    if os.path.exists(path):
        return
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") != 1:
        raise InputError(f"config.models.{role}.path", "no model folder there", path)
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False"):
        return  # online: the load downloads it
    from huggingface_hub import snapshot_download

    _guard(role, path, lambda: snapshot_download(path, local_files_only=True))


def _device(cfg: ModelsConfig) -> torch.device:
    """The configured device, else CUDA when this process sees a GPU (a Ray actor given one)."""
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_stage_models(
    cfg: ModelsConfig, role: str | None, device: torch.device | str | None = None
) -> Models:
    """Only the model of ``role`` (one of ``ROLES``; None: none), as a ``Models``."""
    device = torch.device(device) if device is not None else _device(cfg)
    models = Models(batch_size=cfg.batch_size)
    if role is None or (role in ("captioner", "segmenter") and getattr(cfg, role) is None):
        return models
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.preset is not None:
        detector = cfg.detector.kind if cfg.detector.kind == "owlv2" else "grounding_dino"
        size = cfg.preset.removeprefix("random-")
        model = random_role(role, size, detector=detector, device=device, dtype=dtype)
    else:
        model = load_one(role, getattr(cfg, role), device, dtype)
    setattr(models, role, model)
    return models


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


def random_role(
    role: str,
    size: str = "tiny",
    *,
    seed: int = 0,
    detector: str = "grounding_dino",
    features: str = "dinov2",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_new_tokens: int = 20,
) -> Any:
    """One pipeline model (``role``: captioner, detector, features, segmenter) with random
    weights, seeded per role: each Ray actor builds only its own, the same in every process."""
    name = {"captioner": "blip", "detector": detector, "features": features, "segmenter": "sam"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 100 + ROLES.index(role))
        model, processor = random_model(name[role], size)
        model = model.to(device, dtype)
    if role == "captioner":
        return HFCaptioner(model, processor, max_new_tokens=max_new_tokens)
    if role == "detector":
        wrapper = {"grounding_dino": GroundingDinoDetector, "owlv2": Owlv2Detector}[detector]
        return wrapper(model, processor)
    if role == "features":
        return HFFeatureEncoder(model, getattr(processor, "image_processor", processor))
    return SamSegmenter(model, processor)
