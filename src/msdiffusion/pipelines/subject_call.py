"""The subject half of every MS-Diffusion pipeline call (text-to-image, image-to-image,
inpainting): check the subjects against the prompts and the output size, check that auto layout
can reach the box-less ones, and turn them into the call's ``MSConditioning`` — one
implementation, whatever produces the initial latents.
"""

from __future__ import annotations

from typing import Any

import torch

from ..conditioning import MSConditioning
from ..errors import InputError
from ..layout import Subject, SubjectLayout, normalise_subject_lists, validate_layout
from .call_checks import ip_adapter_loaded
from .subjects import ConditioningSettings, build_conditioning

__all__ = ["SubjectsMixin"]


class SubjectsMixin:
    """Subject handling of the MS-Diffusion pipelines (expects the SDXL components, ``adapter``,
    ``image_encoder`` and ``AdapterMixin.check_processors``)."""

    unet: Any
    tokenizer: Any
    image_encoder: Any

    def _layouts(
        self,
        subjects: list[Subject] | list[list[Subject]] | None,
        prompts: list[str] | None,
        batch_size: int,
        size: tuple[int, int],
        scale: float,
        mask_threshold: float | None,
    ) -> list[list[SubjectLayout]]:
        """The subjects of each prompt, checked against it and the output ``size`` (height,
        width); an empty list per prompt without subjects."""
        subject_lists = normalise_subject_lists(subjects, batch_size)
        if any(subject_lists) and ip_adapter_loaded(self.unet):
            raise InputError(
                "subjects",
                "cannot go with an IP-Adapter: its attention processors replace MS-Diffusion's — "
                "pipe.unload_ip_adapter(), then pipe.attach_adapter(pipe.adapter)",
                sum(map(len, subject_lists)),
            )
        if any(subject_lists):
            self.check_processors()
            if self.image_encoder is None:
                raise InputError("subjects", "need an image_encoder component", None)
        return validate_layout(
            subject_lists,
            prompts or [None] * batch_size,
            self.tokenizer,
            size,
            float(scale),
            mask_threshold,
        )

    @staticmethod
    def _check_auto_layout_reach(
        layouts: list[list[SubjectLayout]], start_step: int, steps: int, auto: bool
    ) -> None:
        """A subject with neither box nor mask is placed by auto layout only, from
        ``start_step`` on: it must come within the steps that run."""
        if not auto or start_step <= steps:
            return
        for i, row in enumerate(layouts):
            for j, layout in enumerate(row):
                if layout.subject.box is None and layout.subject.mask is None:
                    where = ("subjects", i, j) if len(layouts) > 1 else ("subjects", j)
                    raise InputError(
                        (*where, "box"),
                        f"needs a box or a mask: auto layout would place it from step "
                        f"{start_step} (start_step) on, after the last of the {steps} steps",
                        None,
                    )

    def _conditioning(
        self,
        layouts: list[list[SubjectLayout]],
        *,
        latent_size: tuple[int, int],
        num_images_per_prompt: int,
        guided: bool,
        dtype: torch.dtype,
        device: torch.device,
        drop_grounding_tokens: bool,
        mask_threshold: float | None,
        start_step: int,
    ) -> MSConditioning | None:
        """The call's ``MSConditioning`` (tokens, regions, scales, every layer's K/V, once per
        call), or None without subjects. ``guided``: the UNet batch is [unconditional;
        conditional] (classifier-free guidance) and only the conditional half gets subjects."""
        if not any(layouts):
            return None
        rows = len(layouts) * num_images_per_prompt
        settings = ConditioningSettings(
            latent_size=latent_size,
            num_images_per_prompt=num_images_per_prompt,
            cond_start=rows if guided else 0,
            dtype=dtype,
            device=device,
            drop_grounding_tokens=drop_grounding_tokens,
            mask_threshold=mask_threshold,
            start_step=start_step,
            levels=len(self.unet.config.block_out_channels),
        )
        return build_conditioning(layouts, self, settings)
