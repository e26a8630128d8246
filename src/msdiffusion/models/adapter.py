"""``MSAdapter``: owns every trained weight of MS-Diffusion — the grounding resampler, the dummy
image tokens and each cross-attention layer's ``to_k_ip``/``to_v_ip`` — and installs/uninstalls the
multi-subject processors on a UNet. Saved as safetensors + ``config.json`` (the config also in the
safetensors metadata).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_dir
from ..errors import CheckpointError, InputError
from ..version import __version__
from .attention import (
    MSCrossAttnProcessor,
    MSSelfAttnProcessor,
    SubjectProjection,
    cross_attention_layers,
)
from .convert import original_state_dict
from .resampler import GroundingResampler

__all__ = ["MSAdapter", "MSAdapterConfig"]

WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "msdiffusion-adapter/1"


@dataclass
class MSAdapterConfig:
    """Hyper-parameters; the defaults are the released model's. ``layers`` maps each
    cross-attention module name of the UNet to ``[cross_attention_dim, inner_dim]``."""

    image_embed_dim: int = 1664
    phrase_embed_dim: int = 768
    resampler_dim: int = 1280
    resampler_depth: int = 4
    resampler_heads: int = 20
    resampler_head_dim: int = 64
    num_queries: int = 16
    num_dummy_tokens: int = 4
    fourier_freqs: int = 8
    ff_mult: int = 4
    cross_attention_dim: int = 2048
    layers: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MSAdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format", "msdiffusion_version"})
        if unknown:
            raise CheckpointError(f"adapter config has unknown keys {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})


def _module_key(name: str) -> str:
    return name.replace(".", "-")  # ModuleDict keys cannot hold dots


class MSAdapter(nn.Module):
    """The MS-Diffusion adapter for one UNet architecture.

    ``adapter(image_embeds, phrase_embeds, boxes, drop_grounding)`` runs the grounding resampler:
    (N, T, D_img), (N, D_phrase), (N, 4), (N,) bool → subject tokens (N, Q, C).
    """

    def __init__(self, config: MSAdapterConfig):
        super().__init__()
        self.config = config
        c = config
        self.resampler = GroundingResampler(
            image_embed_dim=c.image_embed_dim,
            phrase_embed_dim=c.phrase_embed_dim,
            dim=c.resampler_dim,
            depth=c.resampler_depth,
            heads=c.resampler_heads,
            head_dim=c.resampler_head_dim,
            num_queries=c.num_queries,
            out_dim=c.cross_attention_dim,
            fourier_freqs=c.fourier_freqs,
            ff_mult=c.ff_mult,
        )
        # Kept for checkpoint compatibility: background cells' image output is zeroed, so these
        # tokens never reach the output (DESIGN §2.2).
        self.dummy_tokens = nn.Parameter(torch.zeros(1, c.num_dummy_tokens, c.cross_attention_dim))
        self.projections = nn.ModuleDict(
            {
                _module_key(name): SubjectProjection(cross_dim, inner)
                for name, (cross_dim, inner) in c.layers.items()
            }
        )
        self._installed: dict[int, dict[str, Any]] = {}  # id(unet) → its original processors

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def for_unet(cls, unet: nn.Module, **hparams: Any) -> MSAdapter:
        """A new adapter for ``unet``; ``to_k_ip``/``to_v_ip`` start as ``to_k``/``to_v`` copies."""
        config = cls.config_for_unet(unet, **hparams)
        adapter = cls(config)
        with torch.no_grad():
            for name, attn in cross_attention_layers(unet).items():
                proj = adapter.projection(name)
                proj.to_k_ip.weight.copy_(attn.to_k.weight)
                proj.to_v_ip.weight.copy_(attn.to_v.weight)
        return adapter

    @classmethod
    def config_for_unet(cls, unet: nn.Module, **hparams: Any) -> MSAdapterConfig:
        layers = {
            name: [attn.to_k.in_features, attn.to_k.out_features]
            for name, attn in cross_attention_layers(unet).items()
        }
        if not layers:
            raise InputError("unet", "has no cross-attention layers", type(unet).__name__)
        cross_dims = {dims[0] for dims in layers.values()}
        if len(cross_dims) != 1:
            raise InputError("unet", "cross-attention layers must share one width", cross_dims)
        known = {f.name for f in fields(MSAdapterConfig)} - {"layers", "cross_attention_dim"}
        for key in hparams:
            if key not in known:
                raise InputError(
                    key, f"is not an adapter hyper-parameter ({sorted(known)})", hparams[key]
                )
        return MSAdapterConfig(**hparams, cross_attention_dim=cross_dims.pop(), layers=layers)

    def projection(self, layer: str) -> SubjectProjection:
        return self.projections[_module_key(layer)]

    @property
    def device(self) -> torch.device:
        return self.dummy_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dummy_tokens.dtype

    def projection_prefix(self, layer: str) -> str:
        """State-dict prefix of a layer's projections."""
        return f"projections.{_module_key(layer)}"

    # -- compute --------------------------------------------------------------------------------
    def forward(
        self,
        image_embeds: torch.Tensor,
        phrase_embeds: torch.Tensor,
        boxes: torch.Tensor,
        drop_grounding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.resampler(image_embeds, phrase_embeds, boxes, drop_grounding)

    # -- installation ---------------------------------------------------------------------------
    def install(self, unet: nn.Module) -> None:
        """Put the multi-subject processors on every attention layer of ``unet``."""
        layers = cross_attention_layers(unet)
        expected = set(self.config.layers)
        if set(layers) != expected:
            missing, extra = sorted(expected - set(layers)), sorted(set(layers) - expected)
            raise CheckpointError(
                "adapter does not match this UNet: "
                + (f"layers missing from the UNet: {missing[:3]} " if missing else "")
                + (f"UNet layers the adapter lacks: {extra[:3]}" if extra else "")
            )
        for name, attn in layers.items():
            want = self.config.layers[name]
            have = [attn.to_k.in_features, attn.to_k.out_features]
            if want != have:
                raise CheckpointError(
                    f"adapter layer {name} expects [cross, inner] = {want}, the UNet has {have}"
                )
        if id(unet) in self._installed:
            return
        originals = dict(unet.attn_processors)
        processors: dict[str, Any] = {}
        for key in originals:
            layer = key.removesuffix(".processor")
            processors[key] = (
                MSCrossAttnProcessor(layer, self.projection(layer))
                if layer in layers
                else MSSelfAttnProcessor()
            )
        unet.set_attn_processor(processors)
        self._installed[id(unet)] = originals

    def uninstall(self, unet: nn.Module) -> None:
        """Restore the processors ``unet`` had before ``install``."""
        originals = self._installed.pop(id(unet), None)
        if originals is None:
            raise InputError("unet", "this adapter is not installed on it", type(unet).__name__)
        unet.set_attn_processor(originals)

    def is_installed(self, unet: nn.Module) -> bool:
        return id(unet) in self._installed

    # -- our format -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``adapter.safetensors`` atomically (a folder swapped in)."""
        directory = Path(directory)
        config = {"format": FORMAT, "msdiffusion_version": __version__, **asdict(self.config)}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_dir(directory) as tmp:
            save_file(
                state,
                str(tmp / WEIGHTS_NAME),
                metadata={"format": FORMAT, "config": json.dumps(config)},
            )
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], torch_dtype: torch.dtype | None = None, **_: Any
    ) -> MSAdapter:
        """Load an adapter written by ``save_pretrained`` (a folder, or its safetensors file)."""
        path = Path(directory)
        weights = path / WEIGHTS_NAME if path.is_dir() else path
        if not weights.is_file():
            raise CheckpointError(f"no adapter weights at {weights}")
        try:
            with safe_open(str(weights), framework="pt") as handle:
                meta = handle.metadata() or {}
                state = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{weights} is not a safetensors file ({err})") from None
        if "config" in meta:
            config_data = json.loads(meta["config"])
        elif (weights.parent / CONFIG_NAME).is_file():
            config_data = json.loads((weights.parent / CONFIG_NAME).read_text())
        else:
            raise CheckpointError(f"{weights} carries no adapter config")
        adapter = cls(MSAdapterConfig.from_dict(config_data))
        adapter.load_state_dict_checked(state)
        return adapter.to(torch_dtype) if torch_dtype is not None else adapter

    def load_state_dict_checked(self, state: dict[str, torch.Tensor]) -> None:
        """Load every key, exactly; the error names the first missing, extra or mis-shaped key."""
        own = self.state_dict()
        for key, value in own.items():
            if key not in state:
                raise CheckpointError(f"checkpoint is missing key {key!r}")
            if tuple(state[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"checkpoint key {key!r} has shape {tuple(state[key].shape)},"
                    f" expected {tuple(value.shape)}"
                )
        extra = sorted(set(state) - set(own))
        if extra:
            raise CheckpointError(f"checkpoint has unexpected key {extra[0]!r}")
        self.load_state_dict(state, strict=True)

    @classmethod
    def from_original_checkpoint(
        cls, path: str | os.PathLike[str], unet: nn.Module, **overrides: Any
    ) -> MSAdapter:
        """Load the released ``ms_adapter.bin`` for ``unet`` (the key map:
        ``msdiffusion.models.convert``) — every key used, every shape checked; the error names
        the first missing, extra or mis-shaped key."""
        adapter = cls(cls.config_for_unet(unet, **overrides))
        adapter.load_state_dict(original_state_dict(path, adapter, unet), strict=True)
        return adapter
