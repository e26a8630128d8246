"""``MSDiffusionXLInpaintPipeline``: MS-Diffusion subjects painted into the masked part of an
existing picture — a subclass of diffusers' ``StableDiffusionXLInpaintPipeline`` whose call adds the
subjects of the text-to-image pipeline (same adapter, processors, checks and conditioning) to
diffusers' own inpainting call.

Every subject's region must lie inside the repaint area (``mask_image`` white): each latent cell
its box (or mask) covers must hold repainted pixels, or the call names the subject. With a
4-channel UNet the latent cells outside the mask are the source's at every step (diffusers' rule),
so they come back exactly as plain SDXL inpainting gives them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import StableDiffusionXLInpaintPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..errors import ErrorList, InputError
from ..layout import Subject, SubjectLayout
from .adapter_mixin import AdapterMixin
from .editing import EditingMixin
from .pipeline_msdiffusion_xl import MSDiffusionXLPipelineOutput
from .repaint import regions_outside, repaint_cells
from .subject_call import SubjectsMixin

__all__ = ["MSDiffusionXLInpaintPipeline"]


class MSDiffusionXLInpaintPipeline(
    AdapterMixin, SubjectsMixin, EditingMixin, StableDiffusionXLInpaintPipeline
):
    """Multi-subject, layout-guided SDXL inpainting (MS-Diffusion).

    Components: those of ``StableDiffusionXLInpaintPipeline`` plus ``adapter`` (``MSAdapter``,
    installed on the UNet here); ``image_encoder`` is the subjects' CLIP vision tower. The UNet
    may be SDXL's own (4 input channels) or an inpainting UNet (9). ``from_pipe`` to and from
    ``MSDiffusionXLPipeline`` / ``MSDiffusionXLImg2ImgPipeline`` keeps the adapter.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        subjects: list[Subject] | list[list[Subject]] | None = None,
        *,
        image: Any = None,
        mask_image: Any = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 0.9999,
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
        """Repaint the white part of ``mask_image`` with every subject in its box (or mask).

        Args:
            image: the source picture (PIL, array or tensor, or a list: one per image or one
                for all).
            mask_image: white (≥ 0.5) where the picture is repainted; every subject's region
                must lie inside it.
            height / width: the output size (multiples of the VAE's 8); by default the
                source's, rounded down to that multiple (diffusers' pipeline would use the
                UNet's default square instead).
            padding_mask_crop: diffusers' crop around the mask; not with subjects (their boxes
                are placed in the whole picture).
            strength: how much of the masked part is re-noised, in [0, 1] (0: the source comes
                back unchanged); ``strength × num_inference_steps`` steps run.
            subjects / scale / drop_grounding_tokens / mask_threshold / start_step: as in
                ``MSDiffusionXLPipeline`` (boxes normalised to the output image; auto layout's
                ``start_step`` counts the steps that run).
            The other arguments are those of ``StableDiffusionXLInpaintPipeline``, IP-Adapter
            inputs included (with an IP-Adapter loaded, and no subjects: as in
            ``MSDiffusionXLPipeline``).
        """
        return self._edit(dict(locals()))

    def _check_regions(
        self, layouts: list[list[SubjectLayout]], a: dict[str, Any], size: tuple[int, int]
    ) -> None:
        """Every subject's latent cells inside the repaint area of each of its images' masks."""
        if a["mask_image"] is None:
            raise InputError(
                "mask_image", "is required: white where the picture is repainted", None
            )
        if not any(layouts):
            return
        if a["padding_mask_crop"] is not None:
            raise InputError(
                "padding_mask_crop",
                "cannot go with subjects: their boxes are placed in the whole picture, which "
                "the crop would cut",
                a["padding_mask_crop"],
            )
        factor = self.vae_scale_factor
        repaint = repaint_cells(a["mask_image"], size, factor)  # (n, h, w)
        per_prompt = a["num_images_per_prompt"]
        errors = ErrorList()
        for i, row in enumerate(layouts):
            # image row r gets mask r % n (diffusers repeats the masks over the batch)
            masks = [(i * per_prompt + k) % repaint.shape[0] for k in range(per_prompt)]
            inside = repaint[masks].all(dim=0)  # (h, w)
            regions = [
                (
                    ("subjects", i, j) if len(layouts) > 1 else ("subjects", j),
                    layout.region_box if layout.subject.box is not None else None,
                    layout.mask,
                )
                for j, layout in enumerate(row)
            ]
            for error in regions_outside(regions, inside, factor):
                errors.add(error)
        errors.raise_if_any()
