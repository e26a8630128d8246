"""What the image-to-image and inpainting pipelines share: they start from a source image, noised
by ``strength`` (or from ``denoising_start`` on, for a refiner hand-off), and run diffusers' own
SDXL img2img / inpainting call — the subjects reach its UNet through
``cross_attention_kwargs={"ms": MSConditioning}``, exactly as in the text-to-image pipeline.

A call whose ``strength`` leaves no step to run (0, or so small that ``strength ×
num_inference_steps`` < 1) returns the source image itself, as ``output_type`` asks.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..checks import check_number
from ..errors import InputError
from ..layout import SubjectLayout
from ..models.adapter import MSAdapter
from .call_checks import check_call, check_generators
from .pipeline_msdiffusion_xl import MSDiffusionXLPipelineOutput

__all__ = ["EditingMixin", "SUBJECT_ARGUMENTS"]

# Our arguments of a call; every other one is diffusers' pipeline's
SUBJECT_ARGUMENTS = ("subjects", "scale", "drop_grounding_tokens", "mask_threshold", "start_step")


class EditingMixin:
    """The construction and call of ``MSDiffusionXLImg2ImgPipeline`` and
    ``MSDiffusionXLInpaintPipeline`` (with ``AdapterMixin``, ``SubjectsMixin`` and a diffusers
    SDXL img2img / inpainting pipeline after it: the two take the same components)."""

    unet: Any
    vae: Any
    scheduler: Any
    image_processor: Any
    vae_scale_factor: int

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->adapter->unet->vae"
    _optional_components = [
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "image_encoder",
        "feature_extractor",
        "adapter",
    ]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessorPil | None = None,
        adapter: MSAdapter | None = None,
        requires_aesthetics_score: bool = False,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=self._default_preprocessing(image_encoder, feature_extractor),
            requires_aesthetics_score=requires_aesthetics_score,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self._register_adapter(adapter)

    def _edit(self, a: dict[str, Any]) -> MSDiffusionXLPipelineOutput | tuple:
        """One call: ``a`` holds every argument of the pipeline's ``__call__`` by name."""
        # 0. Checks (every argument, before any model runs)
        a = {k: v for k, v in a.items() if k != "self"}
        if isinstance(a["callback_on_step_end"], (PipelineCallback, MultiPipelineCallbacks)):
            a["callback_on_step_end_tensor_inputs"] = a["callback_on_step_end"].tensor_inputs
        if a["image"] is None:
            raise InputError("image", "is required: the picture to start from", None)
        height, width = self._source_size(a["image"], a.get("height"), a.get("width"))
        call = check_call(
            self,
            {
                **a,
                "height": height,
                "width": width,
                "control_image": None,
                "controlnet_conditioning_scale": 1.0,
            },
        )
        check_number("strength", a["strength"], low=0.0, high=1.0)
        if a["denoising_start"] is not None:
            check_number(
                "denoising_start",
                a["denoising_start"],
                low=0.0,
                high=1.0,
                low_open=True,
                high_open=True,
            )
        rows = call.batch_size * a["num_images_per_prompt"]
        check_generators(a["generator"], rows)

        # 1. Subjects, checked against the prompts, the output size and the source
        layouts = self._layouts(
            a["subjects"],
            call.prompts,
            call.batch_size,
            (height, width),
            a["scale"],
            a["mask_threshold"],
        )
        self._check_regions(layouts, a, (height, width))

        # 2. The steps that run: none leaves the source as it is
        steps = self._steps_that_run(a)
        if steps == 0:
            return self._source_unchanged(a, rows, (height, width))
        self._check_auto_layout_reach(
            layouts, a["start_step"], steps, a["mask_threshold"] is not None
        )

        # 3. Subjects → MSConditioning (once per call; the unconditional half skips them)
        encoder = getattr(self, "text_encoder_2", None) or self.unet
        ms = self._conditioning(
            layouts,
            latent_size=(height // self.vae_scale_factor, width // self.vae_scale_factor),
            num_images_per_prompt=a["num_images_per_prompt"],
            guided=a["guidance_scale"] > 1 and self.unet.config.time_cond_proj_dim is None,
            dtype=encoder.dtype,  # what diffusers' encode_prompt gives the UNet
            device=self._execution_device,
            drop_grounding_tokens=a["drop_grounding_tokens"],
            mask_threshold=a["mask_threshold"],
            start_step=a["start_step"],
        )

        # 4. diffusers' call: its checks, latents from the source, denoising loop, decoding
        kwargs = {k: v for k, v in a.items() if k not in SUBJECT_ARGUMENTS}
        kwargs["callback_on_step_end_tensor_inputs"] = list(a["callback_on_step_end_tensor_inputs"])
        if "height" in kwargs:
            kwargs["height"], kwargs["width"] = height, width
        if ms is not None:
            kwargs["cross_attention_kwargs"] = {**(a["cross_attention_kwargs"] or {}), "ms": ms}
        out = super().__call__(**{**kwargs, "return_dict": False})
        if not a["return_dict"]:
            return out
        return MSDiffusionXLPipelineOutput(images=out[0])

    # -- helpers ----------------------------------------------------------------------------------
    def _is_latents(self, image: Any) -> bool:
        return (
            isinstance(image, torch.Tensor)
            and image.ndim == 4
            and image.shape[1] == self.vae.config.latent_channels
        )

    def _source_size(self, image: Any, height: int | None, width: int | None) -> tuple[int, int]:
        """The output (height, width): given, else the source's, rounded down to the VAE's
        multiple (as diffusers' image processor resizes it)."""
        first = image[0] if isinstance(image, (list, tuple)) and image else image
        factor = self.vae_scale_factor
        if isinstance(first, PIL.Image.Image):
            h, w = first.height, first.width
        elif isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim in (3, 4):
            channels_last = isinstance(first, np.ndarray)
            shape = tuple(first.shape[-3:])
            h, w = shape[:2] if channels_last else shape[1:]
            if self._is_latents(first):
                h, w = h * factor, w * factor
        else:
            raise InputError(
                "image",
                "must be a PIL image, an array (H, W, C) / (B, H, W, C), a tensor (B, C, H, W) — "
                "or latents (B, 4, h, w) — or a list of them",
                type(first).__name__,
            )
        h, w = height or h - h % factor, width or w - w % factor
        if h < factor or w < factor:
            raise InputError("image", f"must be at least {factor} pixels on each side", (h, w))
        return h, w

    def _check_regions(
        self, layouts: list[list[SubjectLayout]], a: dict[str, Any], size: tuple[int, int]
    ) -> None:
        """Subjects against the source (inpainting: inside the repaint mask)."""

    def _steps_that_run(self, a: dict[str, Any]) -> int:
        """How many UNet steps the call will run (diffusers' rule, on a copy of the scheduler)."""
        scheduler = copy.deepcopy(self.scheduler)
        timesteps, n = retrieve_timesteps(
            scheduler, a["num_inference_steps"], "cpu", a["timesteps"], a["sigmas"]
        )
        order = getattr(scheduler, "order", 1)
        start = a["denoising_start"]
        if start is None:
            first = max(n - min(int(n * a["strength"]), n), 0)
            return len(timesteps[first * order :])
        total = scheduler.config.num_train_timesteps
        count = int((timesteps < int(round(total - start * total))).sum())
        return count + 1 if order == 2 and count % 2 == 0 else count

    def _source_unchanged(
        self, a: dict[str, Any], rows: int, size: tuple[int, int]
    ) -> MSDiffusionXLPipelineOutput | tuple:
        """The source, as the output of a call that runs no step (one per image)."""
        image, output_type = a["image"], a["output_type"]
        if self._is_latents(image):
            latents = image
            if output_type != "latent":
                raise InputError(
                    "strength",
                    "leaves no step to run, and the image is latents: pass output_type='latent' "
                    "(they come back as they are) or a larger strength",
                    a["strength"],
                )
            images: Any = latents
        else:
            pixels = self.image_processor.preprocess(image, height=size[0], width=size[1])
            images = pixels  # (n, 3, H, W) in [-1, 1]
            if output_type == "latent":
                vae = self.vae
                posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
                images = posterior.mode() * vae.config.scaling_factor
        n = images.shape[0]
        if n < rows:
            if rows % n:
                raise InputError("image", f"needs 1 image or a number that divides {rows}", n)
            images = images.repeat(rows // n, 1, 1, 1)  # as diffusers repeats its latents
        if output_type != "latent":
            images = self.image_processor.postprocess(images, output_type=output_type)
        return MSDiffusionXLPipelineOutput(images=images) if a["return_dict"] else (images,)
