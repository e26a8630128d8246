"""``MSDiffusionXLPipeline``: SDXL with MS-Diffusion subjects — a subclass of diffusers'
``StableDiffusionXLPipeline`` whose denoising loop passes the subjects to the installed attention
processors as ``cross_attention_kwargs={"ms": MSConditioning}``. Text states stay plain, so a
ControlNet (and any other add-on) sees exactly what it sees in plain SDXL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    rescale_noise_cfg,
    retrieve_timesteps,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..errors import GenerationError, InputError
from ..layout import Subject
from ..models.adapter import MSAdapter
from .adapter_mixin import AdapterMixin
from .call_checks import check_call, check_generators, check_latents
from .subject_call import SubjectsMixin

__all__ = ["MSDiffusionXLPipeline", "MSDiffusionXLPipelineOutput"]


@dataclass
class MSDiffusionXLPipelineOutput(BaseOutput):
    """images: PIL images, or an array/tensor (B, …) for ``output_type`` "np"/"pt"/"latent"."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class MSDiffusionXLPipeline(AdapterMixin, SubjectsMixin, StableDiffusionXLPipeline):
    """Multi-subject, layout-guided SDXL (MS-Diffusion).

    Components: those of ``StableDiffusionXLPipeline`` plus ``image_encoder`` (CLIP ViT-bigG/14
    vision tower), ``feature_extractor`` (its ``CLIPImageProcessor``), ``adapter`` (``MSAdapter``,
    installed on the UNet here) and an optional ``controlnet``. ``from_pipe`` works both ways
    (an SDXL pipeline → this one with ``image_encoder=`` and ``adapter=``, and back).
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
        controlnet: ControlNetModel | None = None,
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
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_modules(controlnet=controlnet)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        self._register_adapter(adapter)

    # -- helpers of the call -----------------------------------------------------------------------
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

    def _time_ids(
        self,
        original_size: tuple[int, int],
        crops_coords_top_left: tuple[int, int],
        target_size: tuple[int, int],
        pooled: torch.Tensor,
    ) -> torch.Tensor:
        projection_dim = (
            self.text_encoder_2.config.projection_dim
            if self.text_encoder_2 is not None
            else int(pooled.shape[-1])
        )
        return self._get_add_time_ids(
            tuple(original_size),
            tuple(crops_coords_top_left),
            tuple(target_size),
            dtype=pooled.dtype,
            text_encoder_projection_dim=projection_dim,
        )

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        subjects: list[Subject] | list[list[Subject]] | None = None,
        *,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        scale: float = 0.6,
        drop_grounding_tokens: bool = False,
        mask_threshold: float | None = None,
        start_step: int = 5,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        control_image: Any = None,
        controlnet_conditioning_scale: float = 1.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> MSDiffusionXLPipelineOutput | tuple:
        """Generate images in which every subject appears in its box (or mask).

        Args:
            prompt: one prompt, or a batch (or ``prompt_embeds`` + ``pooled_prompt_embeds``
                instead, e.g. from compel or for long prompts; auto layout needs the text).
            subjects: ``[Subject, ...]`` for one prompt (or the same for all), or one list per
                prompt (counts may differ). ``None`` or empty: plain SDXL.
            scale: γ, the image-branch scale in [0, 10] (0.6 as released; 0 = plain SDXL). A
                subject's own ``scale`` replaces it for that subject.
            drop_grounding_tokens: start the resampler from its learned queries instead of the
                phrase+box embedding (box-less use; regions still come from boxes or auto layout).
            mask_threshold / start_step: auto layout — from step ``start_step`` on, each layer's
                regions come from its phrase attention maps thresholded at ``mask_threshold``.
            control_image / controlnet_conditioning_scale: used with a ``controlnet`` component.
            ip_adapter_image / ip_adapter_image_embeds: as in diffusers, with an IP-Adapter
                loaded (``pipe.load_ip_adapter``) and without subjects — its processors replace
                the MS-Diffusion ones.
            The other arguments are those of ``StableDiffusionXLPipeline``: ``prompt_2``,
            negative prompts and embeddings, ``denoising_end`` (hand-off to a refiner with
            ``output_type="latent"``), ``guidance_rescale``, ``clip_skip``, the micro-conditioning
            sizes, and ``callback_on_step_end`` with any of ``_callback_tensor_inputs`` (returned
            tensors replace them; ``pipe._interrupt = True`` stops the loop).
        """
        # 0. Checks (every argument, before any model runs) and defaults
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        call = check_call(self, dict(locals()))
        height, width, batch_size = call.height, call.width, call.batch_size
        rows = batch_size * num_images_per_prompt
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        check_latents(
            latents,
            rows,
            self.unet.config.in_channels,
            (height, width),
            self.vae_scale_factor,
            self.unet.dtype,
        )
        check_generators(generator, rows)
        layouts = self._layouts(
            subjects, call.prompts, batch_size, (height, width), scale, mask_threshold
        )
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = denoising_end
        self._interrupt = False
        device = self._execution_device

        # 1. Timesteps (denoising_end cuts the schedule: a refiner takes over)
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        if denoising_end is not None:
            cutoff = round(self.scheduler.config.num_train_timesteps * (1 - float(denoising_end)))
            num_inference_steps = int((timesteps >= cutoff).sum())
            timesteps = timesteps[:num_inference_steps]
        self._check_auto_layout_reach(
            layouts, start_step, len(timesteps), mask_threshold is not None
        )

        # 2. Text
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt=call.prompts,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )

        # 3. Subjects → tokens, regions, scales, every layer's K/V (once per call; the
        #    unconditional half skips them) — or an IP-Adapter's image embeddings
        ms = self._conditioning(
            layouts,
            latent_size=latent_size,
            num_images_per_prompt=num_images_per_prompt,
            guided=self.do_classifier_free_guidance,
            dtype=prompt_embeds.dtype,
            device=device,
            drop_grounding_tokens=drop_grounding_tokens,
            mask_threshold=mask_threshold,
            start_step=start_step,
        )
        ip_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            ip_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                rows,
                self.do_classifier_free_guidance,
            )
        unet_kwargs = dict(cross_attention_kwargs or {})
        if ms is not None:
            unet_kwargs["ms"] = ms

        # 4. Initial latents; SDXL micro-conditioning; classifier-free guidance batches
        #    [unconditional; conditional]
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
        add_time_ids = self._time_ids(original_size, crops_coords_top_left, target_size, pooled)
        negative_time_ids = add_time_ids
        if negative_original_size is not None and negative_target_size is not None:
            negative_time_ids = self._time_ids(
                negative_original_size, negative_crops_coords_top_left, negative_target_size, pooled
            )
        add_text_embeds = pooled
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            add_text_embeds = torch.cat([negative_pooled, pooled])
            add_time_ids = torch.cat([negative_time_ids, add_time_ids])
        prompt_embeds, add_text_embeds = prompt_embeds.to(device), add_text_embeds.to(device)
        add_time_ids = add_time_ids.to(device).repeat(rows, 1)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:  # guidance-distilled UNets
            w = torch.tensor(guidance_scale - 1).repeat(rows)
            timestep_cond = self.get_guidance_scale_embedding(
                w, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
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
                if self.interrupt:
                    continue
                latent_input = (
                    torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                )
                latent_input = self.scheduler.scale_model_input(latent_input, t)
                added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}
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
                    timestep_cond=timestep_cond,
                    cross_attention_kwargs=unet_kwargs or None,
                    added_cond_kwargs=(
                        added_cond_kwargs
                        if ip_embeds is None
                        else {**added_cond_kwargs, "image_embeds": ip_embeds}
                    ),
                    return_dict=False,
                    **residuals,
                )[0]
                if self.do_classifier_free_guidance:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                    if guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, cond, guidance_rescale)
                latents = self.scheduler.step(
                    noise_pred, t, latents, **extra_step_kwargs, return_dict=False
                )[0]
                if callback_on_step_end is not None:
                    tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "add_text_embeds": add_text_embeds,
                        "add_time_ids": add_time_ids,
                    }
                    update = callback_on_step_end(
                        self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    if update is not None and not isinstance(update, dict):
                        raise InputError(
                            "callback_on_step_end",
                            "must return a dict of tensors (or None)",
                            type(update).__name__,
                        )
                    update = update or {}
                    latents = update.pop("latents", latents)
                    prompt_embeds = update.pop("prompt_embeds", prompt_embeds)
                    add_text_embeds = update.pop("add_text_embeds", add_text_embeds)
                    add_time_ids = update.pop("add_time_ids", add_time_ids)
                progress_bar.update()

        # 6. Decode
        if not torch.isfinite(latents).all():
            self.maybe_free_model_hooks()
            raise GenerationError(
                "the denoised latents are not finite (NaN or inf): the model overflowed — try "
                "float32 (--dtype fp32), or smaller scale / guidance_scale values"
            )
        images: Any = latents if output_type == "latent" else self._decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return MSDiffusionXLPipelineOutput(images=images)

    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.vae.to(dtype=torch.float32)
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
        if not torch.isfinite(image).all():
            raise GenerationError(
                "the VAE decoded non-finite pixels (NaN or inf): in float16 use an fp16-safe VAE "
                "(e.g. madebyollin/sdxl-vae-fp16-fix) or float32"
            )
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)
