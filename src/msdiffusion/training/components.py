"""The frozen model a run trains against, and the adapter it trains.

``tiny``: the random-weight components of ``msdiffusion.testing.sdxl`` (CPU, seconds).
``toy``: the toy world's trained base (an SDXL-format folder shipped with the package). ``sdxl``:
SDXL base + the CLIP ViT-bigG/14 image encoder (+ an optional VAE, e.g. the fp16-fix one) from
local folders or hub ids. Frozen weights are cast to the run's weight dtype; the adapter stays fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..loading import load_sdxl_components, model_parts, require_parts
from ..presets import PRESETS
from ..runtime import resolve_dtype, to_dtype
from ..testing.sdxl import adapter_kwargs, random_components
from .config import ModelConfig

__all__ = ["load_components", "build_adapter", "resolve_weight_dtype", "move_module", "FROZEN"]

FROZEN = ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder")


def resolve_weight_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that has it, else fp16 on a GPU, fp32 on the CPU. (Under FSDP the
    frozen modules are not sharded, so they keep this dtype too.)"""
    return resolve_dtype(name, device, prefer_bf16=True)


def move_module(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> None:
    """``module.to(device, dtype)``, passing the dtype only when it changes (diffusers warns on
    every dtype cast)."""
    if next(module.parameters()).dtype == dtype:
        module.to(device)
    else:
        module.to(device, dtype)


def load_components(
    config: ModelConfig, *, with_unet: bool = True, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Frozen components on the CPU: vae, text_encoder(_2), tokenizer(_2), unet (unless
    ``with_unet`` is False), scheduler (inference), noise_scheduler (DDPM, training),
    image_encoder, feature_extractor. Frozen modules are in eval mode, ``requires_grad`` off.
    ``dtype``: load the SDXL weights directly in it (no fp32 copy in memory first); the tiny
    preset is built in fp32 either way — callers cast."""
    from diffusers import DDPMScheduler

    if config.preset == "tiny" and config.base is None:
        components = random_components("tiny", seed=config.tiny_seed)
        if not with_unet:
            components["unet"] = None
    else:
        components = _load_sdxl(config, with_unet, dtype)
    components["noise_scheduler"] = DDPMScheduler.from_config(components["scheduler"].config)
    for name in FROZEN:
        if components[name] is not None:
            components[name].requires_grad_(False).eval()
    return components


def _load_sdxl(
    config: ModelConfig, with_unet: bool = True, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """The SDXL stack through the loading path inference uses (its VAE default, CLIP
    preprocessing and offline-first checks), set by the config's ``model.*`` keys."""
    parts = model_parts(
        config.preset,
        base=config.base,
        image_encoder=config.image_encoder,
        image_encoder_subfolder=config.image_encoder_subfolder,
        vae=config.vae,
        with_adapter=False,  # the parts named by train's flags (model.* in a config file)
    )
    download = require_parts(parts, hint=HINT)
    vae_dtype = to_dtype(config.vae_dtype) if config.vae_dtype else None
    return load_sdxl_components(
        parts,
        dtype=dtype,
        vae_dtype=vae_dtype,
        with_unet=with_unet,
        download=download,
        hint=HINT,
    )


HINT = "or train model.preset=tiny"


def build_adapter(config: ModelConfig, unet: torch.nn.Module) -> Any:
    """A new adapter for ``unet`` (``to_k_ip``/``to_v_ip`` copied from ``to_k``/``to_v``; the rest
    from the global RNG — seed it first), or the one ``init_adapter`` names, for fine-tuning.
    Always fp32."""
    from ..loading import load_adapter
    from ..models.adapter import MSAdapter

    if config.init_adapter is not None:
        if config.adapter:
            raise InputError(
                "model.adapter",
                "hyper-parameters come from model.init_adapter "
                "when fine-tuning; leave model.adapter empty",
                config.adapter,
            )
        adapter = load_adapter(config.init_adapter, unet)
    else:
        arch = PRESETS[config.preset].architecture
        hparams = dict(adapter_kwargs(arch)) if arch else {}
        hparams.update(config.adapter)
        adapter = MSAdapter.for_unet(unet, **hparams)
    return adapter.to(torch.float32)
