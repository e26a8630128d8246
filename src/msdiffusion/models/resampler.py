"""The grounding resampler (DESIGN §2.1 steps 4–7): reference features + phrase + box → Q tokens.

A perceiver: Q learned-or-grounded queries cross-attend to the reference image's CLIP features
(and to themselves) through ``depth`` blocks, then project to the UNet's cross-attention width.
Module names match the released checkpoint's ``image_proj`` keys one for one (see ``convert.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GroundingResampler", "fourier_box_embedding"]


def fourier_box_embedding(boxes: torch.Tensor, num_freqs: int = 8) -> torch.Tensor:
    """GLIGEN-style box embedding: ``(..., 4)`` → ``(..., num_freqs · 2 · 4)``.

    Frequencies f_k = 100^(k / num_freqs). Flattened as [k][sin, cos][x0, y0, x1, y1] — the order
    the released weights were trained with.
    """
    k = torch.arange(num_freqs, device=boxes.device, dtype=torch.float32)
    freqs = 100.0 ** (k / num_freqs)  # (F,)
    angles = freqs[:, None] * boxes.float().unsqueeze(-2)  # (..., F, 4)
    emb = torch.stack((angles.sin(), angles.cos()), dim=-2)  # (..., F, 2, 4)
    return emb.flatten(-3).to(boxes.dtype if boxes.is_floating_point() else torch.float32)


class PerceiverAttention(nn.Module):
    """Queries attend to ``[image features; queries]``; one LayerNorm for each stream."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)  # normalises the image features X
        self.norm2 = nn.LayerNorm(dim)  # normalises the queries
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: (N, T, dim) features; latents: (N, Q, dim) → (N, Q, dim) update."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)  # (N, Q, inner)
        k, v = self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1)  # (N, T+Q, inner) each
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        # (N, h, Q|T+Q, d); softmax in float32 for fp16/bf16 stability
        scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5  # (N, h, Q, T+Q)
        out = scores.softmax(dim=-1).to(v.dtype) @ v  # (N, h, Q, d)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (N, Q, dim)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class GroundingResampler(nn.Module):
    """Reference features ``(N, T, image_embed_dim)`` + grounding (phrase, box) → ``(N, Q, out)``.

    Released sizes: image_embed_dim 1664 (CLIP-G penultimate), phrase_embed_dim 768 (CLIP-L
    pooled), dim 1280, depth 4, 20 heads × 64, Q = 16, out_dim 2048 — about 119 M parameters.
    ``latent_proj_dim``, the hidden width of the grounding MLP, is 2 × the grounding width
    (phrase_embed_dim + 64) by default, as in the original code; it equals image_embed_dim for
    the release only by coincidence (2 × 832 = 1664).
    """

    def __init__(
        self,
        *,
        image_embed_dim: int = 1664,
        phrase_embed_dim: int = 768,
        dim: int = 1280,
        depth: int = 4,
        heads: int = 20,
        head_dim: int = 64,
        num_queries: int = 16,
        out_dim: int = 2048,
        fourier_freqs: int = 8,
        ff_mult: int = 4,
        latent_proj_dim: int | None = None,
    ):
        super().__init__()
        self.num_queries, self.dim, self.fourier_freqs = num_queries, dim, fourier_freqs
        grounding_dim = phrase_embed_dim + fourier_freqs * 2 * 4
        hidden = latent_proj_dim if latent_proj_dim is not None else 2 * grounding_dim
        # learned queries, used instead of the grounded ones when grounding is dropped
        self.grounding_latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.latent_proj = nn.Sequential(
            nn.Linear(grounding_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_queries * dim),
        )
        self.latent_norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(image_embed_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, head_dim), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.attention_norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def initial_queries(
        self, phrase_embeds: torch.Tensor, boxes: torch.Tensor, drop_grounding: torch.Tensor | None
    ) -> torch.Tensor:
        """(N, D_phrase), (N, 4), (N,) bool → (N, Q, dim) starting queries."""
        g = torch.cat(
            (
                phrase_embeds,
                fourier_box_embedding(boxes, self.fourier_freqs).to(phrase_embeds.dtype),
            ),
            dim=-1,
        )  # (N, D_phrase + 64)
        grounded = self.latent_proj(g).unflatten(-1, (self.num_queries, self.dim))  # (N, Q, dim)
        grounded = self.latent_norm(grounded)
        if drop_grounding is None:
            return grounded
        learned = self.grounding_latents.to(grounded.dtype).expand_as(grounded)
        return torch.where(drop_grounding.view(-1, 1, 1).to(grounded.device), learned, grounded)

    def forward(
        self,
        image_embeds: torch.Tensor,
        phrase_embeds: torch.Tensor,
        boxes: torch.Tensor,
        drop_grounding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """image_embeds (N, T, D_img), phrase_embeds (N, D_phrase), boxes (N, 4) in [0, 1],
        drop_grounding (N,) bool or None → tokens (N, Q, out_dim)."""
        latents = self.initial_queries(phrase_embeds, boxes, drop_grounding)  # (N, Q, dim)
        x = self.proj_in(image_embeds)  # (N, T, dim)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(self.attention_norm(latents)))  # (N, Q, out_dim)
