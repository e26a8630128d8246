"""``MSDiffusionXLImg2ImgPipeline``: MS-Diffusion subjects put into an existing picture — a subclass
of diffusers' ``StableDiffusionXLImg2ImgPipeline`` whose call adds the subjects of the
text-to-image pipeline (same adapter, processors, checks and conditioning) to diffusers' own
image-to-image call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..layout import Subject
from .adapter_mixin import AdapterMixin
from .editing import EditingMixin
from .pipeline_msdiffusion_xl import MSDiffusionXLPipelineOutput
from .subject_call import SubjectsMixin

__all__ = ["MSDiffusionXLImg2ImgPipeline"]


class MSDiffusionXLImg2ImgPipeline(
    AdapterMixin, SubjectsMixin, EditingMixin, StableDiffusionXLImg2ImgPipeline
):
    """Multi-subject, layout-guided SDXL image-to-image (MS-Diffusion).

    Components: those of ``StableDiffusionXLImg2ImgPipeline`` plus ``adapter`` (``MSAdapter``,
    installed on the UNet here); ``image_encoder`` is the subjects' CLIP vision tower.
    ``from_pipe`` to and from ``MSDiffusionXLPipeline`` / ``MSDiffusionXLInpaintPipeline`` keeps
    the adapter. As a refiner stage (``denoising_start``, latents as ``image``) it continues the
    subjects of a base stage that ended at ``denoising_end``.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        subjects: list[Subject] | list[list[Subject]] | None = None,
        *,
        image: Any = None,
        strength: float = 0.3,
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
        num_inference_steps: int = 30,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
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
        """Put every subject into its box (or mask) of ``image``.

        Args:
            image: the source picture (PIL, array or tensor, or a list: one per image or one
                for all), any size (rounded down to the VAE's multiple of 8 pixels) — the output
                has its size; or latents (B, 4, h, w) from a stage that ended at
                ``denoising_end`` (then pass ``denoising_start``).
            strength: how much of the source is re-noised, in [0, 1] (0: the source comes back
                unchanged; 1: only its layout of colours is a hint); ``strength ×
                num_inference_steps`` steps run.
            subjects / scale / drop_grounding_tokens / mask_threshold / start_step: as in
                ``MSDiffusionXLPipeline`` (boxes normalised to the output image; auto layout's
                ``start_step`` counts the steps that run).
            The other arguments are those of ``StableDiffusionXLImg2ImgPipeline``, IP-Adapter
            inputs included (with an IP-Adapter loaded, and no subjects: as in
            ``MSDiffusionXLPipeline``).
        """
        return self._edit(dict(locals()))
