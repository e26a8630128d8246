"""``MSConditioning``: everything one UNet call needs for multi-subject attention, carried typed in
``cross_attention_kwargs={"ms": ...}`` — the subject tokens, their regions, scales, the latent
geometry — plus per-call caches, so masks are rasterised once per grid and the constant subject
K/V once per layer, not at every layer and step.

Regions follow DESIGN §2.2: a box covers cell (r, c) iff ``floor(y0·H) ≤ r < ceil(y1·H)`` and
``floor(x0·W) ≤ c < ceil(x1·W)``, on each grid (any aspect ratio; ``geometry.rasterize_boxes``);
a region mask covers the cells it touches (max-pooled to the grid, the same conservative rule).
Auto layout (§2.3) replaces the regions by thresholded text-attention maps from ``start_step`` on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .geometry import rasterize_boxes

__all__ = ["MSConditioning", "latent_grids"]


def latent_grids(latent_size: tuple[int, int], levels: int = 8) -> list[tuple[int, int]]:
    """The (H, W) of each UNet level: stride-2 downsampling with padding rounds up."""
    h, w = latent_size
    grids = [(h, w)]
    for _ in range(levels):
        h, w = (h + 1) // 2, (w + 1) // 2
        grids.append((h, w))
    return grids


@dataclass(frozen=True, eq=False)
class MSConditioning:
    """Per-call multi-subject conditioning for the installed attention processors.

    Shapes: Bc conditioned rows (the UNet batch rows ``cond_start … cond_start + Bc``; with
    classifier-free guidance the unconditional half is left out — its image branch is exactly 0),
    S subjects (padded; padding is marked by ``valid`` and never attended), Q tokens each,
    C = cross-attention width.

    Attributes:
        tokens: (Bc, S, Q, C) subject tokens from the grounding resampler.
        boxes: (Bc, S, 4) normalised boxes; all-zero = no box.
        scales: (Bc, S) each subject's scale (γ, or its own): its attention probabilities are
            multiplied by it after the joint softmax, so a subject of scale 0 still competes for
            the cells it shares with others (as released) and adds nothing itself.
        latent_size: (H, W) of the UNet's input latent; each layer finds its grid from it.
        cond_start: first UNet batch row that gets the image branch.
        valid: (Bc, S) bool, False = padding; None = every subject is real.
        region_masks: (Bc, S, Hm, Wm) bool regions, used where ``has_mask``; or None.
        has_mask: (Bc, S) bool.
        phrase_spans: (Bc, S, 2) token spans ``[start, end)`` of the phrases (auto layout).
        mask_threshold: auto layout threshold; None = boxes/masks only.
        start_step: first step (counting from 1) that uses the attention-map regions.
        cache_kv: keep each layer's subject K/V for the whole call (inference); off in training,
            where each UNet call is one step anyway and gradient checkpointing recomputes.
    """

    tokens: torch.Tensor
    boxes: torch.Tensor
    scales: torch.Tensor
    latent_size: tuple[int, int]
    cond_start: int = 0
    valid: torch.Tensor | None = None
    region_masks: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None
    phrase_spans: torch.Tensor | None = None
    mask_threshold: float | None = None
    start_step: int = 0
    cache_kv: bool = True
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def for_training(
        cls,
        tokens: torch.Tensor,
        boxes: torch.Tensor,
        valid: torch.Tensor,
        latent_size: tuple[int, int],
        scale: float = 1.0,
    ) -> MSConditioning:
        """Training conditioning: all rows conditioned; ``valid`` (B, S) marks real subjects."""
        valid = valid.to(tokens.device, torch.bool)
        boxes = torch.where(valid[..., None], boxes.to(tokens.device, torch.float32), 0.0)
        scales = valid.to(tokens.dtype) * scale
        return cls(
            tokens=tokens,
            boxes=boxes,
            scales=scales,
            latent_size=tuple(latent_size),
            valid=valid,
            cache_kv=False,
        )

    # -- geometry -------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_subjects(self) -> int:
        return self.tokens.shape[1]

    @property
    def real(self) -> torch.Tensor:
        """(Bc, S) bool: the subjects that are not padding."""
        if self.valid is None:
            return torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)
        return self.valid

    @property
    def auto_layout(self) -> bool:
        return self.mask_threshold is not None

    def grid(self, seq_len: int) -> tuple[int, int]:
        """The (h, w) grid of a layer whose image sequence has ``seq_len`` cells."""
        for h, w in latent_grids(self.latent_size):
            if h * w == seq_len:
                return h, w
        raise ValueError(f"no UNet level of a {self.latent_size} latent has {seq_len} cells")

    def box_regions(self, h: int, w: int) -> torch.Tensor:
        """(Bc, S, h·w) bool: the cells each subject's box (or mask) covers on an h×w grid."""
        key = ("regions", h, w)
        if key not in self._cache:
            inside = rasterize_boxes(self.boxes, h, w)  # (Bc, S, h, w)
            if self.region_masks is not None and self.has_mask is not None:
                pooled = F.adaptive_max_pool2d(self.region_masks.float(), (h, w)) > 0.5
                inside = torch.where(self.has_mask[..., None, None], pooled, inside)
            inside = inside & self.real[..., None, None]
            self._cache[key] = inside.flatten(-2)
        return self._cache[key]

    def attention_mask(
        self, inside: torch.Tensor, cache_key: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions (Bc, S, N) → SDPA mask (Bc, 1, N, S·Q) and foreground (Bc, 1, N, 1).

        A cell inside ≥ 1 region attends to exactly those subjects' tokens (one joint softmax);
        background cells get an all-True row (no NaN) and a foreground factor of 0.
        """
        if cache_key is not None and cache_key in self._cache:
            return self._cache[cache_key]
        q = self.tokens.shape[2]
        allowed = inside.transpose(1, 2).repeat_interleave(q, dim=2)  # (Bc, N, S·Q)
        foreground = inside.any(dim=1)  # (Bc, N)
        allowed = (allowed | ~foreground[..., None]).unsqueeze(1)  # (Bc, 1, N, S·Q)
        fg = foreground[:, None, :, None].to(self.tokens.dtype)  # (Bc, 1, N, 1)
        if cache_key is not None:
            self._cache[cache_key] = (allowed, fg)
        return allowed, fg

    # -- subject keys/values --------------------------------------------------------------------
    def subject_kv(
        self, layer: str, projection: torch.nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's subject keys and values (Bc, S·Q, inner); the values carry the scales
        (multiplying a subject's values by s is multiplying its probabilities by s)."""
        key = ("kv", layer)
        if key in self._cache:
            return self._cache[key]
        tokens = self.tokens.flatten(1, 2)  # (Bc, S·Q, C)
        k, v = projection.to_k_ip(tokens), projection.to_v_ip(tokens)  # (Bc, S·Q, inner)
        scale = self.scales.to(v.dtype).repeat_interleave(self.tokens.shape[2], dim=1)  # (Bc, S·Q)
        v = v * scale[..., None]
        if self.cache_kv:
            self._cache[key] = (k, v)
        return k, v

    def precompute(
        self,
        projections: dict[str, torch.nn.Module],
        levels: int,
        dtype: torch.dtype | None = None,
    ) -> MSConditioning:
        """Fill the per-call caches before the first step: every layer's subject K/V (through
        the adapter's projections, while they are on the device; kept in ``dtype``) and the box
        masks of the first ``levels`` UNet grids. The denoising steps then only read — one graph
        under ``torch.compile`` for every step of every call of the same shapes."""
        for layer, projection in projections.items():
            k, v = self.subject_kv(layer, projection)
            if dtype is not None and self.cache_kv:
                self._cache[("kv", layer)] = (k.to(dtype), v.to(dtype))
        for h, w in latent_grids(self.latent_size, levels - 1):
            self.attention_mask(self.box_regions(h, w), cache_key=("mask", h, w))
        return self

    # -- auto layout ----------------------------------------------------------------------------
    def span_weights(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """(Bc, S, length): 1/len over each phrase's token span (zeros for padding)."""
        key = ("spans", length, dtype)
        if key not in self._cache:
            assert self.phrase_spans is not None
            pos = torch.arange(length, device=self.phrase_spans.device)
            start, end = self.phrase_spans[..., :1], self.phrase_spans[..., 1:]  # (Bc, S, 1)
            inside = ((pos >= start) & (pos < end)).to(dtype)  # (Bc, S, L)
            self._cache[key] = inside / inside.sum(-1, keepdim=True).clamp(min=1)
        return self._cache[key]

    def record_attention(self, layer: str, text_probs: torch.Tensor) -> torch.Tensor | None:
        """Add this step's phrase maps of one layer; return its auto-layout regions once active.

        text_probs: (Bc, heads, N, L) text-attention probabilities of the conditioned rows.
        Returns (Bc, S, N) bool regions from ``start_step`` on, else None (use the boxes).
        """
        spans = self.span_weights(text_probs.shape[-1], torch.float32)
        maps = torch.einsum("bhnl,bsl->bsn", text_probs.float(), spans) / text_probs.shape[1]
        key = ("maps", layer)
        total, count = self._cache.get(key, (None, 0))
        total = maps if total is None else total + maps
        self._cache[key] = (total, count + 1)
        if count + 1 < self.start_step:
            return None
        mean = total / (count + 1)  # (Bc, S, N)
        lo, hi = mean.amin(-1, keepdim=True), mean.amax(-1, keepdim=True)
        normed = (mean - lo) / (hi - lo + 1e-5)
        return (normed > self.mask_threshold) & self.real[..., None]
