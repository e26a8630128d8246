"""The trained module: the frozen UNet with the adapter installed, as one ``nn.Module``.

Distributed engines (DDP, FSDP, DeepSpeed) wrap one module and expect every trainable parameter to
be used in its ``forward``; so the resampler runs inside it, next to the UNet call, instead of
outside where DDP would not see its parameters being used.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..conditioning import MSConditioning

__all__ = ["AdapterUNet", "NEVER_TRAINED"]

# Parameters that never receive a gradient: background cells' image output is zeroed, so the
# dummy tokens never reach the output (DESIGN §2.2). They stay frozen (kept for checkpoint
# compatibility), so weight decay does not shrink them and DDP does not wait for their gradient.
NEVER_TRAINED = ("dummy_tokens",)


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

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor,
                time_ids: torch.Tensor, image_embeds: torch.Tensor, phrase_embeds: torch.Tensor,
                boxes: torch.Tensor, valid: torch.Tensor, drop_grounding: torch.Tensor
                ) -> torch.Tensor:
        """noisy_latents (B, 4, h, w), timesteps (B,), prompt_embeds (B, 77, C),
        pooled_prompt_embeds (B, D_pool), time_ids (B, 6), image_embeds (B, S, T, D_img),
        phrase_embeds (B, S, D_phrase), boxes (B, S, 4), valid (B, S) bool, drop_grounding (B,)."""
        b, s = valid.shape
        dtype = self.adapter.resampler.proj_in.weight.dtype
        flat = valid.flatten()  # (B·S,)
        tokens = self.adapter(  # only the real subjects: padding costs nothing and changes nothing
            image_embeds.flatten(0, 1)[flat].to(dtype),  # (N, T, D_img)
            phrase_embeds.flatten(0, 1)[flat].to(dtype),  # (N, D_phrase)
            boxes.flatten(0, 1)[flat].to(dtype),  # (N, 4)
            drop_grounding.repeat_interleave(s)[flat])  # (N,)
        padded = tokens.new_zeros((b * s, *tokens.shape[1:]))  # (B·S, Q, C)
        padded = padded.index_put((flat.nonzero(as_tuple=True)[0],), tokens)
        regions = boxes
        if self.region == "image":  # the grounding tokens keep the boxes; the attention does not
            regions = torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device).expand_as(boxes)
        cond = MSConditioning.for_training(padded.unflatten(0, (b, s)), regions, valid,
                                           latent_size=tuple(noisy_latents.shape[-2:]), scale=1.0)
        unet_dtype = self.unet.conv_in.weight.dtype
        return self.unet(
            noisy_latents.to(unet_dtype), timesteps, encoder_hidden_states=prompt_embeds.to(
                unet_dtype),
            added_cond_kwargs={"text_embeds": pooled_prompt_embeds.to(unet_dtype),
                               "time_ids": time_ids.to(unet_dtype)},
            cross_attention_kwargs={"ms": cond}, return_dict=False)[0]
