"""The released checkpoint format (``ms_adapter.bin``) ↔ ``MSAdapter`` — an explicit key map.

``MSAdapter.from_original_checkpoint`` reads it (through ``original_state_dict``); the functions
here take the adapter they fill or write (anything with its ``resampler``, ``state_dict`` and
``projection_prefix``). The released file is a pickled dict of three state dicts (DESIGN §2.5)::

    "image_proj":         the resampler; its keys are exactly GroundingResampler's (module names
                          were chosen to match), e.g. "layers.0.0.to_kv.weight"
    "ms_adapter":         "{i}.to_k_ip.weight", "{i}.to_v_ip.weight", i = the position of a
                          cross-attention processor in ``unet.attn_processors`` (down blocks, up
                          blocks, mid block; attn1 before attn2) — only odd i have weights
    "dummy_image_tokens": (1, G, C)

It is read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
Only here does the layer *order* of the UNet matter: the released format demands it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import CheckpointError
from .attention import cross_attention_layers

__all__ = [
    "released_layer_order",
    "original_key_map",
    "original_state_dict",
    "save_original_checkpoint",
    "read_original_file",
]

SECTIONS = ("image_proj", "ms_adapter", "dummy_image_tokens")


def released_layer_order(unet: nn.Module) -> dict[int, str]:
    """Released processor index → cross-attention module name, from ``unet.attn_processors``."""
    cross = cross_attention_layers(unet)
    order: dict[int, str] = {}
    for i, key in enumerate(unet.attn_processors):
        name = key.removesuffix(".processor")
        is_cross = name in cross
        if is_cross != (i % 2 == 1):
            raise CheckpointError(
                f"UNet processor {i} ({name}) breaks the released layout (self-attention at even, "
                "cross-attention at odd positions): this UNet is not SDXL-shaped"
            )
        if is_cross:
            order[i] = name
    return order


def original_key_map(adapter: nn.Module, unet: nn.Module) -> dict[str, str]:
    """Released key ("section/key") → our state-dict key, for every weight of ``adapter``."""
    mapping: dict[str, str] = {}
    for key in adapter.resampler.state_dict():
        mapping[f"image_proj/{key}"] = f"resampler.{key}"
    for i, name in released_layer_order(unet).items():
        prefix = adapter.projection_prefix(name)
        mapping[f"ms_adapter/{i}.to_k_ip.weight"] = f"{prefix}.to_k_ip.weight"
        mapping[f"ms_adapter/{i}.to_v_ip.weight"] = f"{prefix}.to_v_ip.weight"
    mapping["dummy_image_tokens/"] = "dummy_tokens"
    own = set(adapter.state_dict())
    assert set(mapping.values()) == own, "key map must cover the adapter exactly"
    return mapping


def read_original_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a released-format file safely; clear errors for non-checkpoints and unsafe pickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file does not exist: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused by the safe loader (weights_only=True): it is not a plain "
            f"weights file and may run code when unpickled ({str(err).splitlines()[0][:160]})"
        ) from None
    except Exception as err:  # zip/format errors: not a torch checkpoint at all
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''})"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} holds a {type(data).__name__}, expected a dict with keys {list(SECTIONS)}"
        )
    missing = [s for s in SECTIONS if s not in data]
    if missing:
        raise CheckpointError(
            f"{path} is not an MS-Diffusion checkpoint: missing section "
            f"{missing[0]!r} (has {sorted(map(str, data))[:5]})"
        )
    extra = sorted(set(map(str, data)) - set(SECTIONS))
    if extra:
        raise CheckpointError(f"{path} has unexpected section {extra[0]!r}")
    return data


def _flatten(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for section in ("image_proj", "ms_adapter"):
        if not isinstance(data[section], dict):
            raise CheckpointError(f"section {section!r} must be a state dict")
        for key, value in data[section].items():
            flat[f"{section}/{key}"] = value
    flat["dummy_image_tokens/"] = data["dummy_image_tokens"]
    return flat


def original_state_dict(
    path: str | os.PathLike[str], adapter: nn.Module, unet: nn.Module
) -> dict[str, torch.Tensor]:
    """``adapter``'s state dict from a released-format file for ``unet`` — every key used, every
    shape checked; the error names the first missing, extra or mis-shaped key."""
    flat = _flatten(read_original_file(path))
    mapping = original_key_map(adapter, unet)
    own = adapter.state_dict()
    state: dict[str, torch.Tensor] = {}
    for theirs, ours in mapping.items():
        if theirs not in flat:
            raise CheckpointError(
                f"checkpoint is missing key {theirs.replace('/', '.', 1)!r} (needed for {ours})"
            )
        value = flat[theirs]
        if not isinstance(value, torch.Tensor) or value.shape != own[ours].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(
                f"checkpoint key {theirs.replace('/', '.', 1)!r} has shape "
                f"{shape}, this UNet/config needs {tuple(own[ours].shape)}"
            )
        state[ours] = value
    extra = sorted(set(flat) - set(mapping))
    if extra:
        raise CheckpointError(
            f"checkpoint has unexpected key {extra[0].replace('/', '.', 1)!r} "
            "(a different UNet or adapter configuration?)"
        )
    return state


def save_original_checkpoint(
    adapter: nn.Module, unet: nn.Module, path: str | os.PathLike[str]
) -> Path:
    """Write ``adapter`` in the released format (for the original code and round-trip checks)."""
    own = adapter.state_dict()
    data: dict[str, Any] = {"image_proj": {}, "ms_adapter": {}}
    for theirs, ours in original_key_map(adapter, unet).items():
        section, key = theirs.split("/", 1)
        tensor = own[ours].detach().cpu().clone()
        if section == "dummy_image_tokens":
            data[section] = tensor
        else:
            data[section][key] = tensor
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path
