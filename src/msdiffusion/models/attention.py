"""Attention processors installed by ``MSAdapter.install`` (DESIGN §2.2).

``MSCrossAttnProcessor`` keeps the layer's frozen text attention and adds the multi-subject image
branch: each image cell attends (one joint softmax) to the tokens of exactly the subjects whose
region covers it; background cells get 0. Output: ``to_out(text + image)``, the per-subject scales
folded into the image values. ``MSSelfAttnProcessor`` is plain attention that accepts the ``ms``
keyword, so diffusers passes it without warnings.

The compute is batched over samples and subjects (no Python loops): masks come rasterised once
per grid and the subject K/V once per layer from ``MSConditioning``; the unconditional half of
classifier-free guidance is skipped (its image branch is exactly zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from ..conditioning import MSConditioning

__all__ = [
    "cross_attention_layers",
    "SubjectProjection",
    "MSSelfAttnProcessor",
    "MSCrossAttnProcessor",
]


def cross_attention_layers(unet: nn.Module) -> dict[str, Attention]:
    """The UNet's cross-attention modules by module name (found by introspection)."""
    return {
        name: m
        for name, m in unet.named_modules()
        if isinstance(m, Attention) and m.is_cross_attention
    }


class SubjectProjection(nn.Module):
    """The two trained projections of one cross-attention layer: subject tokens → keys/values."""

    def __init__(self, cross_attention_dim: int, inner_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)


class MSSelfAttnProcessor(AttnProcessor2_0):
    """Scaled-dot-product attention that accepts (and ignores) the ``ms`` conditioning."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ms: MSConditioning | None = None,
        **kwargs,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class MSCrossAttnProcessor(nn.Module):
    """Text cross-attention + multi-subject image attention for one layer.

    Registered as a submodule of its ``Attention`` (so it moves with the UNet), it refers to the
    adapter's ``SubjectProjection`` of this layer — the adapter owns the weights.
    """

    def __init__(self, layer: str, projection: SubjectProjection):
        super().__init__()
        self.layer = layer
        self.projection = projection

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ms: MSConditioning | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, N, c)
        batch, seq_len, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        heads = attn.heads
        q = attn.to_q(hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, h, N, d)
        k = attn.to_k(encoder_hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B,h,L,d)
        v = attn.to_v(encoder_hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)  # (B, h, N, d)

        if ms is not None and ms.num_subjects > 0:
            rows = slice(ms.cond_start, ms.cond_start + ms.num_rows)
            image = self.image_attention(q[rows], k[rows], ms, seq_len)  # (Bc, h, N, d)
            if ms.cond_start == 0 and ms.num_rows == batch:
                out = out + image
            elif torch.is_grad_enabled():  # autograd may need SDPA's output as it was
                out = torch.cat((out[: rows.start], out[rows] + image, out[rows.stop :]), dim=0)
            else:  # inference: no second full-size buffer
                out[rows] += image

        hidden_states = out.transpose(1, 2).flatten(2).to(q.dtype)  # (B, N, h·d)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def image_attention(
        self, q: torch.Tensor, k_text: torch.Tensor, ms: MSConditioning, seq_len: int
    ) -> torch.Tensor:
        """q (Bc, h, N, d) of the conditioned rows → image-branch output (Bc, h, N, d)."""
        grid = ms.grid(seq_len)
        regions = None
        if ms.auto_layout:
            # this layer's own text-attention probabilities over the prompt, for the phrase maps
            probs = q.float() @ k_text.float().transpose(-1, -2) * q.shape[-1] ** -0.5
            regions = ms.record_attention(self.layer, probs.softmax(-1))  # (Bc, S, N) or None
        if regions is None:
            mask, fg = ms.attention_mask(ms.box_regions(*grid), cache_key=("mask",) + grid)
        else:
            mask, fg = ms.attention_mask(regions)
        k, v = ms.subject_kv(
            self.layer, self.projection.to_k_ip, self.projection.to_v_ip, q.shape[1]
        )  # (Bc, h, S·Q, d)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return out * fg.to(out.dtype)  # background cells: exactly 0
