"""Validation images during training: fixed layouts, generated with the current adapter through
the inference pipeline itself (``msdiffusion.inference.generate``), saved as one grid per step.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..atomic import atomic_save_image
from ..request import GenerationRequest
from .config import ValidationConfig

__all__ = ["validation_requests", "render_validation", "validate"]

logger = logging.getLogger("msdiffusion.training")


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


def validate(trainer: Any) -> Path | None:
    """A trainer's validation grid at its current step, on the main process (the others wait);
    with the EMA weights when EMA is on, leaving the training RNG untouched."""
    acc, v = trainer.accelerator, trainer.config.validation
    path = None
    if trainer.engine == "fsdp":  # the main process does not hold the whole sharded adapter
        logger.warning(
            "validation: skipped under FSDP; generate from a checkpoint's adapter "
            "folder with `msdiffusion generate --adapter` instead"
        )
    elif trainer.is_main and v.requests:
        unwrapped = acc.unwrap_model(trainer.model)
        if trainer.cached:
            trainer._place_encoders(acc.device)
        devices = [acc.device] if acc.device.type == "cuda" else []
        try:
            with trainer.ema_weights(), torch.random.fork_rng(devices=devices):
                requests = validation_requests(v, trainer.config.data.size)
                path = trainer.output_dir / "validation" / f"step-{trainer.state.step:08d}.png"
                grid = render_validation(
                    {**trainer.components, "unet": unwrapped.unet},
                    unwrapped.adapter,
                    requests,
                    path,
                    acc.autocast,
                )
        finally:
            if trainer.cached:
                trainer._place_encoders(torch.device("cpu"))
        _log_image(acc, grid, trainer.state.step)
        logger.info("validation: %s", path)
    acc.wait_for_everyone()
    return path


def _log_image(accelerator: Any, grid: Image.Image, step: int) -> None:
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images(
                {"validation": np.asarray(grid)[None]}, step=step, dataformats="NHWC"
            )
