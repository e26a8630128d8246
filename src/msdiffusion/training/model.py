"""The trained module: the frozen UNet with the adapter installed, as one ``nn.Module``.

Distributed engines (DDP, FSDP, DeepSpeed) wrap one module and expect every trainable parameter to
be used in its ``forward``; so the resampler runs inside it, next to the UNet call, instead of
outside where DDP would not see its parameters being used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..conditioning import MSConditioning

__all__ = ["AdapterUNet", "Conditions", "NEVER_TRAINED"]

# Parameters that never receive a gradient: background cells' image output is zeroed, so the
# dummy tokens never reach the output (DESIGN §2.2). They stay frozen (kept for checkpoint
# compatibility), so weight decay does not shrink them and DDP does not wait for their gradient.
NEVER_TRAINED = ("dummy_tokens",)


@dataclass
class Conditions:
    """What one step conditions the UNet on (B samples, S subjects after padding)."""

    prompt_embeds: torch.Tensor  # (B, 77, C) penultimate states of both text encoders
    pooled_prompt_embeds: torch.Tensor  # (B, D_pool) text_encoder_2's projected pooled output
    time_ids: torch.Tensor  # (B, 6) original size, crop top-left, target size
    image_embeds: torch.Tensor  # (B, S, T, D_img) penultimate CLIP vision states
    phrase_embeds: torch.Tensor  # (B, S, D_phrase) pooled CLIP-L phrase embeddings
    boxes: torch.Tensor  # (B, S, 4) normalised to the training crop
    valid: torch.Tensor  # (B, S) bool, False = padding
    drop_grounding: torch.Tensor  # (B,) bool


class AdapterUNet(nn.Module):
    """``forward`` = grounding resampler on the real subjects + the UNet with the adapter's
    processors; returns the UNet's prediction ``(B, 4, h, w)``."""

    def __init__(self, unet: nn.Module, adapter: nn.Module, region: str = "box"):
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        self.region = region  # "box" (released) | "image": every cell attends to every subject
        adapter.install(unet)
        unet.requires_grad_(False)  # the adapter's projections are shared with the processors:
        adapter.requires_grad_(True)  # freeze the UNet first, then unfreeze the adapter
        for name in NEVER_TRAINED:
            getattr(adapter, name).requires_grad_(False)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.adapter.parameters() if p.requires_grad)

    def forward(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, conditions: Conditions
    ) -> torch.Tensor:
        """noisy_latents (B, 4, h, w), timesteps (B,), ``conditions`` (shapes: ``Conditions``)."""
        c = conditions
        b, s = c.valid.shape
        dtype = self.adapter.resampler.proj_in.weight.dtype
        flat = c.valid.flatten()  # (B·S,)
        tokens = self.adapter(  # only the real subjects: padding costs nothing and changes nothing
            c.image_embeds.flatten(0, 1)[flat].to(dtype),  # (N, T, D_img)
            c.phrase_embeds.flatten(0, 1)[flat].to(dtype),  # (N, D_phrase)
            c.boxes.flatten(0, 1)[flat].to(dtype),  # (N, 4)
            c.drop_grounding.repeat_interleave(s)[flat],
        )  # (N,)
        padded = tokens.new_zeros((b * s, *tokens.shape[1:]))  # (B·S, Q, C)
        padded = padded.index_put((flat.nonzero(as_tuple=True)[0],), tokens)
        regions = c.boxes
        if self.region == "image":  # the grounding tokens keep the boxes; the attention does not
            regions = torch.tensor([0.0, 0.0, 1.0, 1.0], device=c.boxes.device).expand_as(c.boxes)
        cond = MSConditioning.for_training(
            padded.unflatten(0, (b, s)),
            regions,
            c.valid,
            latent_size=tuple(noisy_latents.shape[-2:]),
            scale=1.0,
        )
        unet_dtype = self.unet.conv_in.weight.dtype
        return self.unet(
            noisy_latents.to(unet_dtype),
            timesteps,
            encoder_hidden_states=c.prompt_embeds.to(unet_dtype),
            added_cond_kwargs={
                "text_embeds": c.pooled_prompt_embeds.to(unet_dtype),
                "time_ids": c.time_ids.to(unet_dtype),
            },
            cross_attention_kwargs={"ms": cond},
            return_dict=False,
        )[0]
