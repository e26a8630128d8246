"""Validation images during training: fixed layouts, generated with the current adapter through
the inference pipeline itself (``msdiffusion.inference.generate``), saved as one grid per step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from PIL import Image

from ..atomic import atomic_save_image
from ..request import GenerationRequest
from .config import ValidationConfig

__all__ = ["validation_requests", "render_validation"]


def validation_requests(config: ValidationConfig, size: tuple[int, int]) -> list[GenerationRequest]:
    """The configured requests, with the validation defaults for fields they leave out."""
    defaults = {
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
        "scale": config.scale,
        "seed": config.seed,
        "height": config.size or size[0],
        "width": config.size or size[1],
    }
    out = []
    for i, raw in enumerate(config.requests):
        if not isinstance(raw, dict):
            from ..errors import InputError

            raise InputError(f"validation.requests[{i}]", "must be a request object", raw)
        out.append(GenerationRequest.from_dict({**defaults, **raw}, base_dir=config.base_dir))
    return out


def render_validation(
    components: dict[str, Any],
    adapter: Any,
    requests: list[GenerationRequest],
    out_path: Path,
    autocast: Any = contextlib.nullcontext,
) -> Image.Image:
    """Generate every request (one row each; overlays show boxes and references) → grid PNG."""
    from ..inference import generate
    from ..loading import LoadedModel
    from ..pipelines.pipeline_msdiffusion_xl import MSDiffusionXLPipeline
    from ..visualize import draw_overlay, image_grid

    pipe = MSDiffusionXLPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        text_encoder_2=components["text_encoder_2"],
        tokenizer=components["tokenizer"],
        tokenizer_2=components["tokenizer_2"],
        unet=components["unet"],
        scheduler=components["scheduler"],
        image_encoder=components["image_encoder"],
        feature_extractor=components["feature_extractor"],
        adapter=adapter,
        force_zeros_for_empty_prompt=components.get("force_zeros_for_empty_prompt", True),
    )
    model = LoadedModel(
        pipe=pipe, info={"source": "training validation"}, default_size=requests[0].height or 1024
    )
    with autocast():
        results = generate(model, requests, progress=False)
    tiles = [draw_overlay(image, result.request) for result in results for image in result.images]
    columns = max(len(result.images) for result in results)
    grid = image_grid(tiles, columns=columns)
    atomic_save_image(grid, out_path)
    return grid
