"""Building a ready pipeline: by preset (``tiny``: random weights; ``sdxl``: the released model)
or from paths and hub ids, with an explanation (what to download) for a model that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, ModelNotAvailableError
from .presets import PRESETS
from .runtime import dtype_label, load_or_explain, resolve_device, resolve_dtype
from .testing.sdxl import adapter_kwargs, random_components

__all__ = ["LoadedModel", "load_pipeline", "load_adapter"]

TINY_HINT = "or use --preset tiny to try the package without weights"


@dataclass
class LoadedModel:
    """A ready pipeline and a description of what it was built from (for sidecars)."""

    pipe: Any
    info: dict[str, Any]
    default_size: int


def load_adapter(source: str, unet: torch.nn.Module, filename: str | None = None) -> Any:
    """An adapter from our folder, a released ``.bin``, or a hub repo id (+ filename)."""
    from .models.adapter import MSAdapter

    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        return MSAdapter.from_pretrained(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return MSAdapter.from_pretrained(path)
        return MSAdapter.from_original_checkpoint(path, unet)
    if path.is_absolute() or source.startswith("."):
        raise InputError("adapter", "no adapter folder or checkpoint file there", source)
    from huggingface_hub import hf_hub_download

    name = filename or "ms_adapter.bin"
    local = load_or_explain(  # offline, missing repo, no access
        lambda: hf_hub_download(source, name),
        what="MS-Diffusion adapter",
        source=source,
        fix=f"download it with `hf download {source} {name}` and pass --adapter PATH, {TINY_HINT}",
    )
    return MSAdapter.from_original_checkpoint(local, unet)


def _check_toy_weights() -> None:
    from .presets import TOY_MODEL

    missing = [p for p in ("base", "image_encoder", "adapter") if not (TOY_MODEL / p).is_dir()]
    if missing:
        raise ModelNotAvailableError(
            f"the toy preset's weights are missing from {TOY_MODEL} ({', '.join(missing)}); "
            "`make learn` trains them (docs/learning.md)"
        )


def load_pipeline(
    preset: str = "tiny",
    *,
    base: str | None = None,
    image_encoder: str | None = None,
    adapter: str | None = None,
    vae: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Build the pipeline of ``preset`` ("tiny", "toy" or "sdxl"); any component may be a local
    path."""
    from .models.adapter import MSAdapter
    from .pipelines.pipeline_msdiffusion_xl import MSDiffusionXLPipeline

    if preset not in PRESETS:
        raise InputError("preset", f"must be one of {sorted(PRESETS)}", preset)
    spec = PRESETS[preset]
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    info: dict[str, Any] = {
        "preset": preset,
        "device": str(torch_device),
        "dtype": dtype_label(torch_dtype),
    }
    if preset == "tiny" and base is None:
        components = random_components("tiny", seed=0)
        if adapter is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                ms_adapter = MSAdapter.for_unet(components["unet"], **adapter_kwargs("tiny"))
        else:
            ms_adapter = load_adapter(adapter, components["unet"])
        pipe = MSDiffusionXLPipeline(**components, adapter=ms_adapter)
        info.update(
            base="tiny (random weights)",
            image_encoder="tiny (random weights)",
            adapter=adapter or "tiny (random weights, seed 0)",
        )
    else:
        from transformers import CLIPVisionModelWithProjection

        base = base or spec.base
        encoder_source = image_encoder or spec.image_encoder
        subfolder = "" if image_encoder else (spec.image_encoder_subfolder or "")
        if preset == "toy" and not (base and image_encoder and adapter):
            _check_toy_weights()
        encoder = load_or_explain(
            lambda: CLIPVisionModelWithProjection.from_pretrained(
                encoder_source, subfolder=subfolder, torch_dtype=torch_dtype
            ),
            what="image encoder",
            source=encoder_source,
            fix=f"download it with `hf download {spec.image_encoder} --include "
            f"'{spec.image_encoder_subfolder}/*'` and pass --image-encoder "
            f"PATH/{spec.image_encoder_subfolder}, {TINY_HINT}",
        )
        extra: dict[str, Any] = {}
        if vae is not None:
            from diffusers import AutoencoderKL

            extra["vae"] = load_or_explain(
                lambda: AutoencoderKL.from_pretrained(vae, torch_dtype=torch_dtype),
                what="VAE",
                source=vae,
                fix=f"pass a local --vae PATH, {TINY_HINT}",
            )
        pipe = load_or_explain(
            lambda: MSDiffusionXLPipeline.from_pretrained(
                base,
                image_encoder=encoder,
                adapter=None,
                controlnet=None,
                torch_dtype=torch_dtype,
                **extra,
            ),
            what="SDXL base",
            source=base,
            fix=f"download it with `hf download {spec.base}` and pass --base PATH, {TINY_HINT}",
        )
        ms_adapter = load_adapter(
            adapter or spec.adapter, pipe.unet, None if adapter else spec.adapter_filename
        )
        pipe.attach_adapter(ms_adapter.to(torch_dtype))
        info.update(
            base=base,
            image_encoder=encoder_source if not subfolder else f"{encoder_source}/{subfolder}",
            adapter=adapter or f"{spec.adapter}/{spec.adapter_filename}",
            vae=vae,
        )
    if pipe.unet.dtype != torch_dtype:  # tiny components are built in float32
        pipe.to(dtype=torch_dtype)
    pipe.to(torch_device)
    return LoadedModel(pipe=pipe, info=info, default_size=spec.default_size)
