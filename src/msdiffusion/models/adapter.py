"""``MSAdapter``: owns every trained weight of MS-Diffusion — the grounding resampler, the dummy
image tokens and each cross-attention layer's ``to_k_ip``/``to_v_ip`` — and installs/uninstalls the
multi-subject processors on a UNet. The processors hold no weights of their own, so the UNet's
``state_dict`` stays exactly SDXL's; what is installed is read from the UNet's processors.

Our format: safetensors + ``config.json`` (the config also in the safetensors metadata), read from
a folder or a hub repository like diffusers models (``subfolder``, ``revision``,
``local_files_only``). Format 2 records ``latent_proj_dim``; format-1 files (written before it
existed) used ``image_embed_dim`` there and load with that width.
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
from ..hub import HubOptions, fetch_file, file_exists, is_local
from ..version import __version__
from .attention import (
    MSAttnProcessor,
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
RELEASED_NAME = "ms_adapter.bin"
FORMAT_1 = "msdiffusion-adapter/1"  # latent_proj's hidden width was image_embed_dim
FORMAT = "msdiffusion-adapter/2"  # latent_proj_dim recorded (default: the original rule)


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
    # Hidden width of the resampler's grounding MLP; None = the original rule,
    # 2 × (phrase_embed_dim + 8 · fourier_freqs) — 1664 for the release.
    latent_proj_dim: int | None = None
    cross_attention_dim: int = 2048
    layers: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latent_proj_dim is None:
            self.latent_proj_dim = 2 * (self.phrase_embed_dim + 8 * self.fourier_freqs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MSAdapterConfig:
        """A config as saved (``format`` 1 or 2); a format-1 config without ``latent_proj_dim``
        keeps the width it was trained with, ``image_embed_dim``."""
        fmt = data.get("format", FORMAT_1)
        if fmt not in (FORMAT_1, FORMAT):
            raise CheckpointError(
                f"adapter format {fmt!r} is not one this version reads ({FORMAT_1}, {FORMAT}): "
                f"written by a newer msdiffusion? (this is {__version__})"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format", "msdiffusion_version"})
        if unknown:
            raise CheckpointError(f"adapter config has unknown keys {unknown}")
        values = {k: v for k, v in data.items() if k in known}
        if fmt == FORMAT_1 and values.get("latent_proj_dim") is None:
            values["latent_proj_dim"] = values.get("image_embed_dim", cls.image_embed_dim)
        return cls(**values)


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
            latent_proj_dim=c.latent_proj_dim,
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

    def layer_projections(self) -> dict[str, SubjectProjection]:
        """Each cross-attention layer's projections, by the UNet's module name."""
        return {name: self.projection(name) for name in self.config.layers}

    # -- installation ---------------------------------------------------------------------------
    def install(self, unet: nn.Module) -> None:
        """Put the multi-subject processors on every attention layer of ``unet``.

        Each keeps the processor it replaces (an earlier MS-Diffusion install passes its own on,
        with its slicing and fused-projection choices), so ``uninstall`` restores them exactly.
        """
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
        processors: dict[str, Any] = {}
        for key, current in unet.attn_processors.items():
            layer = key.removesuffix(".processor")
            ours = isinstance(current, MSAttnProcessor)
            # one made without an adapter (by hand, or re-made by diffusers' IP-Adapter loading)
            # has no original of its own: it is what uninstall restores
            original = current.original if ours and current.original is not None else current
            slice_size = current.slice_size if ours else getattr(current, "slice_size", None)
            fused = current.fused if ours else False
            processors[key] = (
                MSCrossAttnProcessor(
                    layer, self.projection(layer), self, original, slice_size, fused
                )
                if layer in layers
                else MSSelfAttnProcessor(self, original, slice_size, fused)
            )
        unet.set_attn_processor(processors)

    def uninstall(self, unet: nn.Module, *, missing_ok: bool = False) -> None:
        """Restore the processors this adapter's processors replaced on ``unet``."""
        current = unet.attn_processors
        mine = {k for k, p in current.items() if isinstance(p, MSAttnProcessor) and p.owner is self}
        if not mine:
            if missing_ok:
                return
            raise InputError("unet", "this adapter is not installed on it", type(unet).__name__)
        unet.set_attn_processor({k: (p.original if k in mine else p) for k, p in current.items()})

    def is_installed(self, unet: nn.Module) -> bool:
        """Every attention processor of ``unet`` is this adapter's (read from the UNet)."""
        return not self.foreign_processors(unet) and bool(unet.attn_processors)

    def foreign_processors(self, unet: nn.Module) -> dict[str, int]:
        """Processor class name → how many of ``unet``'s attention layers have one that is not
        this adapter's (empty when it is installed everywhere)."""
        counts: dict[str, int] = {}
        for key, p in unet.attn_processors.items():
            layer = key.removesuffix(".processor")
            ours = isinstance(p, MSAttnProcessor) and p.owner is self
            if isinstance(p, MSCrossAttnProcessor):
                ours = (
                    ours and layer in self.config.layers and p.projection is self.projection(layer)
                )
            if not ours:
                name = type(p).__name__ + (
                    " of another adapter" if isinstance(p, MSAttnProcessor) else ""
                )
                counts[name] = counts.get(name, 0) + 1
        return counts

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
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        torch_dtype: torch.dtype | None = None,
        weight_name: str = WEIGHTS_NAME,
        **hub: Any,
    ) -> MSAdapter:
        """Load an adapter written by ``save_pretrained``: a folder, its safetensors file, or a
        hub repository — ``subfolder``, ``revision``, ``local_files_only``, ``cache_dir`` and
        ``token`` as in diffusers' ``from_pretrained``."""
        options = HubOptions.pop_from(hub)
        if hub:
            raise InputError(next(iter(hub)), "is not an adapter loading option", hub)
        weights = fetch_file(
            pretrained_model_name_or_path, weight_name, options, what="MS-Diffusion adapter"
        )
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

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        unet: nn.Module,
        *,
        weight_name: str | None = None,
        hparams: dict[str, Any] | None = None,
        **hub: Any,
    ) -> MSAdapter:
        """An adapter in either format, from a folder, a file or a hub repository: ours
        (``adapter.safetensors`` + config) or the released ``ms_adapter.bin`` (for ``unet``;
        ``hparams`` for a configuration other than the release's). ``weight_name`` picks the
        file; without it ours is looked for first."""
        options = HubOptions.pop_from(hub)
        if hub:
            raise InputError(next(iter(hub)), "is not an adapter loading option", hub)
        path = Path(os.path.expanduser(os.fspath(source)))
        if is_local(source) and path.is_file():
            weight_name = path.name
        elif weight_name is None:
            ours = file_exists(source, WEIGHTS_NAME, options)
            weight_name = WEIGHTS_NAME if ours else RELEASED_NAME
        if weight_name.endswith(".safetensors"):
            return cls.from_pretrained(source, weight_name=weight_name, **vars(options))
        local = fetch_file(source, weight_name, options, what="MS-Diffusion adapter")
        return cls.from_original_checkpoint(local, unet, **(hparams or {}))

    def load_state_dict_checked(self, state: dict[str, torch.Tensor]) -> None:
        """Load every key, exactly; the error names the first missing, extra or mis-shaped key."""
        own = self.state_dict()
        for key, value in own.items():
            if key not in state:
                raise CheckpointError(f"checkpoint is missing key {key!r}")
            if tuple(state[key].shape) != tuple(value.shape):
                hint = ""
                first = state.get("resampler.latent_proj.0.weight")
                if key.startswith("resampler.latent_proj.") and first is not None:
                    hint = (
                        f" (the file's grounding MLP is {first.shape[0]} wide, this adapter's "
                        f"{self.config.latent_proj_dim} — adapters of format 1 used "
                        f"image_embed_dim: build it with latent_proj_dim={first.shape[0]})"
                    )
                raise CheckpointError(
                    f"checkpoint key {key!r} has shape {tuple(state[key].shape)},"
                    f" expected {tuple(value.shape)}{hint}"
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
