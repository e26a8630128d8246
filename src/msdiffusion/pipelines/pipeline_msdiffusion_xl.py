"""``MSDiffusionXLPipeline``: SDXL with MS-Diffusion subjects — a subclass of diffusers'
``StableDiffusionXLPipeline`` whose denoising loop passes the subjects to the installed attention
processors as ``cross_attention_kwargs={"ms": MSConditioning}``. Text states stay plain, so a
ControlNet (and any other add-on) sees exactly what it sees in plain SDXL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
from diffusers.utils import BaseOutput

from ..errors import InputError
from ..layout import Subject, normalise_subject_lists, validate_layout, validate_scale
from ..models.adapter import MSAdapter
from .subjects import ConditioningSettings, build_conditioning

__all__ = ["MSDiffusionXLPipeline", "MSDiffusionXLPipelineOutput"]

ADAPTER_FOLDER = "adapter"


@dataclass
class MSDiffusionXLPipelineOutput(BaseOutput):
    """images: PIL images, or an array/tensor (B, …) for ``output_type`` "np"/"pt"/"latent"."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class MSDiffusionXLPipeline(StableDiffusionXLPipeline):
    """Multi-subject, layout-guided SDXL (MS-Diffusion).

    Components: those of ``StableDiffusionXLPipeline`` plus ``image_encoder`` (CLIP ViT-bigG/14
    vision tower), ``feature_extractor`` (its ``CLIPImageProcessor``), ``adapter`` (``MSAdapter``,
    installed on the UNet here) and an optional ``controlnet``.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->adapter->unet->vae"
    _optional_components = [
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "image_encoder",
        "feature_extractor",
        "adapter",
        "controlnet",
    ]

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        image_encoder=None,
        feature_extractor=None,
        adapter: MSAdapter | None = None,
        controlnet=None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        if feature_extractor is None and image_encoder is not None:
            # the image encoder's folder usually has no preprocessor config: CLIP's defaults
            from transformers import CLIPImageProcessorPil

            side = image_encoder.config.image_size
            feature_extractor = CLIPImageProcessorPil(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            )
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_modules(adapter=adapter, controlnet=controlnet)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        if adapter is not None:
            adapter.install(unet)

    def attach_adapter(self, adapter: MSAdapter | None) -> None:
        """Swap the adapter: uninstall the current one (if any), install ``adapter`` (or none)."""
        if self.adapter is not None and self.adapter.is_installed(self.unet):
            self.adapter.uninstall(self.unet)
        self.register_modules(adapter=adapter)
        if adapter is not None:
            adapter.install(self.unet)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """diffusers' folder layout with the UNet saved clean (adapter uninstalled meanwhile) and
        the adapter in ``adapter/`` (our format); ``from_pretrained`` restores both."""
        adapter = self.adapter
        installed = adapter is not None and adapter.is_installed(self.unet)
        if installed:
            adapter.uninstall(self.unet)
        self.register_modules(adapter=None)
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_modules(adapter=adapter)
            if installed:
                adapter.install(self.unet)
        if adapter is not None:
            adapter.save_pretrained(Path(save_directory) / ADAPTER_FOLDER)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> MSDiffusionXLPipeline:
        """``StableDiffusionXLPipeline.from_pretrained`` plus the adapter: passed as
        ``adapter=``, or read from the folder's ``adapter/`` when present."""
        adapter = kwargs.pop("adapter", None)
        pipe = super().from_pretrained(pretrained_model_name_or_path, adapter=None, **kwargs)
        folder = Path(pretrained_model_name_or_path) / ADAPTER_FOLDER
        if adapter is None and (folder / "config.json").is_file():
            adapter = MSAdapter.from_pretrained(folder)
        if adapter is not None:
            dtype = kwargs.get("torch_dtype")
            pipe.attach_adapter(
                adapter.to(
                    pipe.unet.device, dtype if isinstance(dtype, torch.dtype) else pipe.unet.dtype
                )
            )
        return pipe

    # -- checks ---------------------------------------------------------------------------------
    def _check_call(
        self,
        prompt: Any,
        height: int,
        width: int,
        scale: float,
        mask_threshold: float | None,
        start_step: int,
        num_images_per_prompt: int,
    ) -> list[str]:
        if isinstance(prompt, str):
            prompts = [prompt]
        elif (
            isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt)
        ):
            prompts = list(prompt)
        else:
            raise InputError("prompt", "must be a string or a non-empty list of strings", prompt)
        multiple = self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise InputError(name, f"must be a positive multiple of {multiple}", value)
        validate_scale(scale, "scale")
        if mask_threshold is not None and not (0.0 <= float(mask_threshold) < 1.0):
            raise InputError("mask_threshold", "must lie in [0, 1)", mask_threshold)
        if not isinstance(start_step, int) or start_step < 0:
            raise InputError("start_step", "must be an integer >= 0", start_step)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InputError(
                "num_images_per_prompt", "must be an integer >= 1", num_images_per_prompt
            )
        return prompts

    def _prepare_control_image(
        self,
        image: Any,
        height: int,
        width: int,
        rows: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        image = self.control_image_processor.preprocess(image, height=height, width=width)
        image = image.to(device=device, dtype=torch.float32)  # (n, 3, H, W)
        if image.shape[0] not in (1, rows):
            raise InputError("control_image", f"needs 1 or {rows} images", image.shape[0])
        image = image.repeat(rows // image.shape[0], 1, 1, 1).to(dtype)
        return torch.cat([image] * 2) if self.do_classifier_free_guidance else image

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        subjects: list[Subject] | list[list[Subject]] | None = None,
        *,
        negative_prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        scale: float = 0.6,
        drop_grounding_tokens: bool = False,
        mask_threshold: float | None = None,
        start_step: int = 5,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        control_image: Any = None,
        controlnet_conditioning_scale: float = 1.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> MSDiffusionXLPipelineOutput | tuple:
        """Generate images in which every subject appears in its box (or mask).

        Args:
            prompt: one prompt, or a batch.
            subjects: ``[Subject, ...]`` for one prompt (or the same for all), or one list per
                prompt (counts may differ). ``None`` or empty: plain SDXL.
            scale: γ, the image-branch scale (0.6 as released; 0 = plain SDXL). A subject's own
                ``scale`` replaces it for that subject.
            drop_grounding_tokens: start the resampler from its learned queries instead of the
                phrase+box embedding (box-less use; regions still come from boxes or auto layout).
            mask_threshold / start_step: auto layout — from step ``start_step`` on, each layer's
                regions come from its phrase attention maps thresholded at ``mask_threshold``.
            control_image / controlnet_conditioning_scale: used with a ``controlnet`` component.
            The other arguments are those of ``StableDiffusionXLPipeline``.
        """
        # 0. Defaults and checks
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        prompts = self._check_call(
            prompt, height, width, scale, mask_threshold, start_step, num_images_per_prompt
        )
        batch_size = len(prompts)
        subject_lists = normalise_subject_lists(subjects, batch_size)
        if any(subject_lists) and self.adapter is None:
            raise InputError("subjects", "need an adapter (pipeline built without one)", None)
        layouts = validate_layout(
            subject_lists, prompts, self.tokenizer, (height, width), float(scale), mask_threshold
        )
        if self.controlnet is not None and control_image is None:
            raise InputError("control_image", "is required with a controlnet", None)
        self.check_inputs(
            prompt,
            prompt_2,
            height,
            width,
            None,
            negative_prompt,
            negative_prompt_2,
            callback_on_step_end_tensor_inputs=list(callback_on_step_end_tensor_inputs),
        )
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        self._guidance_scale = guidance_scale
        self._guidance_rescale = 0.0
        self._clip_skip = None
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = None
        self._interrupt = False
        device = self._execution_device
        rows = batch_size * num_images_per_prompt

        # 1. Text
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt=prompts,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            lora_scale=lora_scale,
        )

        # 2. Subjects → tokens, regions, scales (once per call; the unconditional half skips them)
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        ms = None
        if any(subject_lists):
            settings = ConditioningSettings(
                latent_size=latent_size,
                num_images_per_prompt=num_images_per_prompt,
                cond_start=rows if self.do_classifier_free_guidance else 0,
                dtype=prompt_embeds.dtype,
                device=device,
                drop_grounding_tokens=drop_grounding_tokens,
                mask_threshold=mask_threshold,
                start_step=start_step,
            )
            ms = build_conditioning(layouts, self, settings)
        unet_kwargs = dict(cross_attention_kwargs or {})
        if ms is not None:
            unet_kwargs["ms"] = ms

        # 3. Timesteps and initial latents
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        latents = self.prepare_latents(
            rows,
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 4. SDXL micro-conditioning; classifier-free guidance batches [unconditional; conditional]
        projection_dim = (
            self.text_encoder_2.config.projection_dim
            if self.text_encoder_2 is not None
            else int(pooled.shape[-1])
        )
        add_time_ids = self._get_add_time_ids(
            original_size,
            crops_coords_top_left,
            target_size,
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        add_text_embeds = pooled
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            add_text_embeds = torch.cat([negative_pooled, pooled])
            add_time_ids = torch.cat([add_time_ids, add_time_ids])
        prompt_embeds, add_text_embeds = prompt_embeds.to(device), add_text_embeds.to(device)
        add_time_ids = add_time_ids.to(device).repeat(rows, 1)
        added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}
        control = None
        if self.controlnet is not None:
            control = self._prepare_control_image(
                control_image, height, width, rows, device, prompt_embeds.dtype
            )

        # 5. Denoising loop
        self._num_timesteps = len(timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                latent_input = (
                    torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                )
                latent_input = self.scheduler.scale_model_input(latent_input, t)
                residuals: dict[str, Any] = {}
                if control is not None:  # plain text states: the ControlNet never sees subjects
                    down, mid = self.controlnet(
                        latent_input,
                        t,
                        encoder_hidden_states=prompt_embeds,
                        controlnet_cond=control,
                        conditioning_scale=controlnet_conditioning_scale,
                        added_cond_kwargs=added_cond_kwargs,
                        return_dict=False,
                    )
                    residuals = {
                        "down_block_additional_residuals": down,
                        "mid_block_additional_residual": mid,
                    }
                noise_pred = self.unet(
                    latent_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    cross_attention_kwargs=unet_kwargs or None,
                    added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                    **residuals,
                )[0]
                if self.do_classifier_free_guidance:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(
                    noise_pred, t, latents, **extra_step_kwargs, return_dict=False
                )[0]
                if callback_on_step_end is not None:
                    names = {"latents": latents, "prompt_embeds": prompt_embeds}
                    update = (
                        callback_on_step_end(
                            self, i, t, {k: names[k] for k in callback_on_step_end_tensor_inputs}
                        )
                        or {}
                    )
                    latents = update.pop("latents", latents)
                progress_bar.update()

        # 6. Decode
        if output_type == "latent":
            images: Any = latents
        else:
            images = self._decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return MSDiffusionXLPipelineOutput(images=images)

    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.upcast_vae()
        latents = latents.to(next(iter(self.vae.post_quant_conv.parameters())).dtype)
        config = self.vae.config
        if (
            getattr(config, "latents_mean", None) is not None
            and getattr(config, "latents_std", None) is not None
        ):
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)
