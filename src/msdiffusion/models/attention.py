"""Attention processors installed by ``MSAdapter.install`` (DESIGN §2.2).

``MSCrossAttnProcessor`` keeps the layer's frozen text attention and adds the multi-subject image
branch: each image cell attends (one joint softmax) to the tokens of exactly the subjects whose
region covers it; background cells get 0. Output: ``to_out(text + image)``, the per-subject scales
folded into the image values. ``MSSelfAttnProcessor`` is plain attention that accepts the ``ms``
keyword, so diffusers passes it without warnings.

The processors are plain objects, not modules: the UNet's ``state_dict`` and parameters stay
exactly those of the UNet (the adapter owns every trained weight), so ``unet.save_pretrained``,
``ControlNetModel.from_unet`` and CPU offload see a plain SDXL UNet. Each processor remembers the
adapter that installed it (``owner``) and the processor it replaced (``original``): what is
installed is read from the UNet itself. They implement what diffusers' own processor choices
offer: attention slicing (``slice_size``, heads in chunks) and fused projections (``fused``: the
layer's ``to_qkv`` / ``to_kv``).

The compute is batched over samples and subjects (no Python loops): masks come rasterised once
per grid and the subject K/V once per layer from ``MSConditioning``; the unconditional half of
classifier-free guidance is skipped (its image branch is exactly zero).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from ..conditioning import MSConditioning
from ..errors import InputError

__all__ = [
    "cross_attention_layers",
    "SubjectProjection",
    "MSAttnProcessor",
    "MSSelfAttnProcessor",
    "MSCrossAttnProcessor",
    "configure_processors",
]

HOW_TO_UNINSTALL = (
    "an MS-Diffusion processor; to use diffusers' default attention, uninstall the adapter first "
    "(pipe.attach_adapter(None) or adapter.uninstall(unet)) — the MS-Diffusion processors already "
    "run PyTorch's scaled-dot-product attention"
)


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


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, L, h·d) → (B, h, L, d)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    slice_size: int | None,
) -> torch.Tensor:
    """SDPA over (B, h, N, d) × (B, h, L, d); with ``slice_size``, ``slice_size`` heads at a time
    (attention slicing: less memory at once, the same result)."""
    if slice_size is None or slice_size >= q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    chunks = []
    for start in range(0, q.shape[1], slice_size):
        heads = slice(start, start + slice_size)
        m = mask if mask is None or mask.shape[1] == 1 else mask[:, heads]
        chunks.append(F.scaled_dot_product_attention(q[:, heads], k[:, heads], v[:, heads], m))
    return torch.cat(chunks, dim=1)  # (B, h, N, d)


class MSAttnProcessor:
    """What both MS-Diffusion processors share: who installed them, what they replaced, and the
    diffusers attention choices they implement (slicing, fused projections).

    Args:
        owner: the ``MSAdapter`` that installed this processor (None: set by hand).
        original: the processor it replaced (``uninstall`` puts it back).
        slice_size: heads per attention slice (None: all at once).
        fused: use the layer's fused ``to_qkv`` / ``to_kv`` (after ``attn.fuse_projections()``).
    """

    def __init__(
        self,
        owner: nn.Module | None = None,
        original: Any = None,
        slice_size: int | None = None,
        fused: bool = False,
    ):
        self.owner = owner
        self.original = original
        self.slice_size = slice_size
        self.fused = fused

    def __repr__(self) -> str:  # diffusers prints it when it refuses to replace it
        return f"{type(self).__name__} ({HOW_TO_UNINSTALL})"

    # -- the parts of an attention call around the attention itself -----------------------------
    @staticmethod
    def _enter(
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[int, ...] | None]:
        """Normalise and flatten: → hidden (B, N, c), context (B, L, c') or None, SDPA mask, and
        the (B, c, h, w) shape of a 4-D input."""
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = None
        if hidden_states.ndim == 4:
            shape = tuple(hidden_states.shape)
            b, c, h, w = shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, N, c)
        batch = hidden_states.shape[0]
        context_len = (
            hidden_states.shape[1]
            if encoder_hidden_states is None
            else encoder_hidden_states.shape[1]
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        return hidden_states, encoder_hidden_states, attention_mask, shape

    def _project(
        self, attn: Attention, hidden: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, h, N|L, d) — through the fused projections when ``fused``."""
        source = hidden if context is None else context
        if self.fused and not attn.is_cross_attention:
            q, k, v = attn.to_qkv(hidden).chunk(3, dim=-1)  # (B, N, h·d) each
        elif self.fused:
            q = attn.to_q(hidden)
            k, v = attn.to_kv(source).chunk(2, dim=-1)  # (B, L, h·d) each
        else:
            q, k, v = attn.to_q(hidden), attn.to_k(source), attn.to_v(source)
        q, k, v = (_heads(t, attn.heads) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        return q, k, v

    @staticmethod
    def _exit(
        attn: Attention,
        out: torch.Tensor,
        residual: torch.Tensor,
        shape: tuple[int, ...] | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        hidden_states = out.transpose(1, 2).flatten(2).to(dtype)  # (B, N, h·d)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if shape is not None:
            hidden_states = hidden_states.transpose(-1, -2).reshape(shape)  # (B, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class MSSelfAttnProcessor(MSAttnProcessor):
    """Scaled-dot-product attention that accepts (and ignores) the ``ms`` conditioning."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ms: MSConditioning | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden, context, mask, shape = self._enter(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        q, k, v = self._project(attn, hidden, context)
        out = attend(q, k, v, mask, self.slice_size)  # (B, h, N, d)
        return self._exit(attn, out, residual, shape, q.dtype)


class MSCrossAttnProcessor(MSAttnProcessor):
    """Text cross-attention + multi-subject image attention for one layer.

    ``layer`` is the module name the adapter keys its ``SubjectProjection`` by; the projection's
    weights stay in the adapter (``owner``).
    """

    def __init__(
        self,
        layer: str,
        projection: SubjectProjection,
        owner: nn.Module | None = None,
        original: Any = None,
        slice_size: int | None = None,
        fused: bool = False,
    ):
        super().__init__(owner, original, slice_size, fused)
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
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden, context, mask, shape = self._enter(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        q, k, v = self._project(attn, hidden, context)  # (B, h, N|L, d)
        out = attend(q, k, v, mask, self.slice_size)  # (B, h, N, d)

        if ms is not None and ms.num_subjects > 0:
            batch, seq_len = hidden.shape[:2]
            rows = slice(ms.cond_start, ms.cond_start + ms.num_rows)
            image = self.image_attention(q[rows], k[rows], ms, seq_len)  # (Bc, h, N, d)
            if ms.cond_start == 0 and ms.num_rows == batch:
                out = out + image
            elif torch.is_grad_enabled():  # autograd may need SDPA's output as it was
                out = torch.cat((out[: rows.start], out[rows] + image, out[rows.stop :]), dim=0)
            else:  # inference: no second full-size buffer
                out[rows] += image
        return self._exit(attn, out, residual, shape, q.dtype)

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
        k, v = ms.subject_kv(self.layer, self.projection)  # (Bc, S·Q, h·d) each
        k, v = _heads(k.to(q.dtype), q.shape[1]), _heads(v.to(q.dtype), q.shape[1])
        out = attend(q, k, v, mask, self.slice_size)  # (Bc, h, N, d)
        return out * fg.to(out.dtype)  # background cells: exactly 0


_KEEP: Any = object()


def _slice_heads(slice_size: int | str | None, heads: int) -> int | None:
    """diffusers' slice sizes (None, "auto" = half the heads, "max" = 1, or a number of heads)."""
    if slice_size is None:
        return None
    if slice_size == "auto":
        return max(heads // 2, 1)
    if slice_size == "max":
        return 1
    if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
        raise InputError(
            "slice_size", 'must be "auto", "max" or a number of heads >= 1', slice_size
        )
    if slice_size > heads:
        raise InputError("slice_size", f"must be at most a layer's {heads} heads", slice_size)
    return slice_size


def configure_processors(
    unet: nn.Module, *, slice_size: int | str | None = _KEEP, fused: bool | None = None
) -> None:
    """Set attention slicing and/or fused projections on the MS-Diffusion processors of ``unet``
    (what ``enable_attention_slicing`` and ``fuse_qkv_projections`` ask for)."""
    layers = [
        m
        for m in unet.modules()
        if isinstance(m, Attention) and isinstance(m.processor, MSAttnProcessor)
    ]
    sizes = [  # checked for every layer before any changes
        _slice_heads(slice_size, m.heads) if slice_size is not _KEEP else m.processor.slice_size
        for m in layers
    ]
    for module, size in zip(layers, sizes):
        module.processor.slice_size = size
        if fused is not None:
            module.processor.fused = fused
