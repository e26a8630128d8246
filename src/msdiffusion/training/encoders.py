"""The frozen encoders of a training step: VAE, both SDXL text encoders, the image encoder.

One place turns a live batch (pixels, captions, reference pixels, phrases) into the UNet's inputs;
the embedding cache runs the same functions once and stores their outputs, and both draw the
latents' noise the same way — so cached and live training see the same tensors (bit for bit when
the cache is stored in the encoders' dtype; docs/training.md says where they can differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..encoding import encode_phrases, encode_pixels
from .model import Conditions

__all__ = ["FrozenEncoders", "ModelInputs"]


@dataclass
class ModelInputs(Conditions):
    """Everything one step feeds the UNet + adapter: the conditions and the clean latents."""

    latents: torch.Tensor  # (B, 4, h, w), scaled by the VAE's scaling factor


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters())
    return param.device, param.dtype


class FrozenEncoders:
    """Wraps the frozen components; every method runs under ``torch.no_grad``."""

    def __init__(
        self,
        *,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        image_encoder: Any,
        feature_extractor: Any = None,
        **_: Any,
    ):
        self.vae, self.image_encoder = vae, image_encoder
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.feature_extractor = feature_extractor

    # -- text ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL's text conditioning, as diffusers' SDXL pipeline builds it (no CFG, no LoRA):
        ``hidden_states[-2]`` of both encoders concatenated ``(B, 77, C)``, and text_encoder_2's
        projected pooled output ``(B, D_pool)``."""
        states, pooled = [], None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(
                list(captions),
                padding="max_length",
                truncation=True,
                max_length=tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids  # (B, 77)
            device, _ = _device_dtype(encoder)
            out = encoder(ids.to(device), output_hidden_states=True)
            states.append(out.hidden_states[-2])  # (B, 77, D_k)
            pooled = out[0]  # the last encoder's projected pooled output, (B, D_pool)
        return torch.cat(states, dim=-1), pooled  # (B, 77, C), (B, D_pool)

    @torch.no_grad()
    def encode_phrases(self, phrases: Sequence[str]) -> torch.Tensor:
        """``(N, D_phrase)`` pooled CLIP-L embeddings (msdiffusion.encoding.encode_phrases)."""
        return encode_phrases(list(phrases), self.tokenizer, self.text_encoder)

    # -- images ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_latent_moments(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` in [-1, 1] → the VAE posterior's (mean, logvar),
        ``(B, 2·4, h, w)``."""
        device, dtype = _device_dtype(self.vae)
        return self.vae.encode(pixel_values.to(device, dtype)).latent_dist.parameters

    def sample_latents(self, moments: torch.Tensor) -> torch.Tensor:
        """Draw from the posterior (global RNG) and scale: ``(B, 2·4, h, w)`` → ``(B, 4, h, w)``.

        The moments are made contiguous and the noise drawn for an explicit shape: a VAE may return
        channels-last moments (the CPU one does) and ``randn_like`` would lay the same numbers out
        in that memory order — live and cached training draw the same noise either way."""
        mean, logvar = moments.float().contiguous().chunk(2, dim=1)  # (B, 4, h, w) each
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        latents = mean + std * torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_references(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed reference pixels ``(N, 3, s, s)`` → ``(N, T, D_img)``."""
        device, dtype = _device_dtype(self.image_encoder)
        return encode_pixels(pixels.to(device, dtype), self.image_encoder)

    # -- batches ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_subjects(
        self, reference_pixels: torch.Tensor, phrases: Sequence[Sequence[str]], valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode only the real subjects and scatter them back into padded tensors:
        ``(B, S, 3, s, s)``, B lists of S phrases, ``(B, S)`` →
        ``(B, S, T, D_img)``, ``(B, S, D_phrase)``."""
        b, s = valid.shape
        flat_valid = valid.flatten().cpu()  # (B·S,)
        pixels = reference_pixels.flatten(0, 1)[flat_valid]  # (N, 3, s, s)
        names = [p for row in phrases for p in row]
        names = [names[i] for i in range(len(names)) if flat_valid[i]]
        feats = self.encode_references(pixels)  # (N, T, D_img)
        phr = self.encode_phrases(names)  # (N, D_phrase)
        image_embeds = feats.new_zeros((b * s, *feats.shape[1:]))
        phrase_embeds = phr.new_zeros((b * s, phr.shape[-1]))
        image_embeds[flat_valid.to(feats.device)] = feats
        phrase_embeds[flat_valid.to(phr.device)] = phr
        return image_embeds.unflatten(0, (b, s)), phrase_embeds.unflatten(0, (b, s))

    @torch.no_grad()
    def encode_batch(self, batch: dict[str, Any], device: torch.device) -> ModelInputs:
        """A collated live batch (see ``ManifestDataset``) → ModelInputs on ``device``."""
        moments = self.encode_latent_moments(batch["pixel_values"].to(device))
        prompt_embeds, pooled = self.encode_prompts(batch["caption"])
        valid = batch["valid"].to(device)
        image_embeds, phrase_embeds = self.encode_subjects(
            batch["reference_pixels"], batch["phrases"], valid
        )
        return ModelInputs(
            latents=self.sample_latents(moments),
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            time_ids=batch["time_ids"].to(device),
            image_embeds=image_embeds,
            phrase_embeds=phrase_embeds,
            boxes=batch["boxes"].to(device),
            valid=valid,
            drop_grounding=batch["drop_grounding"].to(device),
        )

    def cached_batch(self, batch: dict[str, Any], device: torch.device) -> ModelInputs:
        """A collated batch of the embedding cache → ModelInputs on ``device`` (latents drawn
        from the cached posterior, the rest as cached)."""
        names = ("prompt_embeds", "pooled_prompt_embeds", "time_ids", "image_embeds")
        names += ("phrase_embeds", "boxes", "valid", "drop_grounding")
        return ModelInputs(
            latents=self.sample_latents(batch["latent_moments"].to(device)),
            **{name: batch[name].to(device) for name in names},
        )

    @torch.no_grad()
    def null_embeddings(self, reference_size: int | None = None) -> dict[str, torch.Tensor]:
        """What the dropouts substitute, for the cache: the empty caption's text embeddings
        ``(77, C)``, ``(D_pool)`` and the image features of all-zero reference pixels,
        ``(T, D_img)``."""
        if reference_size is None:
            reference_size = self.image_encoder.config.image_size
        prompt_embeds, pooled = self.encode_prompts([""])
        zeros = torch.zeros(1, 3, reference_size, reference_size)
        return {
            "prompt_embeds": prompt_embeds[0],
            "pooled_prompt_embeds": pooled[0],
            "image_embeds": self.encode_references(zeros)[0],
        }
