"""Write SDXL components as one original-format checkpoint — the single ``.safetensors`` file
SDXL fine-tunes are shared as (the layout of Stability AI's ``sd_xl_base_1.0.safetensors``) — so
the single-file loading path can be tested offline on tiny components.

The layout, per part (diffusers' names on the left):

- UNet, under ``model.diffusion_model.``: ``conv_in`` → ``input_blocks.0.0``; level ``l``'s
  resnet / attention ``j`` → ``input_blocks.{1 + l·(L+1) + j}.0`` / ``.1`` (L = layers per
  block), its downsampler → ``input_blocks.{(l+1)·(L+1)}.0.op``; the mid block's resnet 0,
  attention, resnet 1 → ``middle_block.0`` / ``.1`` / ``.2``; up level ``l``'s resnet /
  attention ``j`` → ``output_blocks.{l·(L+1) + j}.0`` / ``.1``, its upsampler →
  ``output_blocks.{l·(L+1) + L}.{1, or 2 after an attention}.conv``; ``time_embedding.linear_1/2``
  → ``time_embed.0/2``, ``add_embedding.linear_1/2`` → ``label_emb.0.0/0.2``, ``conv_norm_out``
  / ``conv_out`` → ``out.0`` / ``out.2``. In resnets ``norm1, conv1, time_emb_proj, norm2,
  conv2, conv_shortcut`` → ``in_layers.0, in_layers.2, emb_layers.1, out_layers.0,
  out_layers.3, skip_connection``; transformer blocks keep their names.
- VAE, under ``first_stage_model.``: ``down_blocks.i.resnets.j`` → ``down.i.block.j``, its
  downsampler → ``down.i.downsample.conv``; decoder ``up_blocks.i`` → ``up.{n-1-i}`` (reversed),
  ``upsamplers.0`` → ``upsample``; ``mid_block.resnets.k`` → ``mid.block_{k+1}``, its attention →
  ``mid.attn_1`` with ``norm, q, k, v, proj_out`` as 1×1 convolutions; ``conv_shortcut`` →
  ``nin_shortcut``, ``conv_norm_out`` → ``norm_out``.
- First text encoder (CLIP-L), under ``conditioner.embedders.0.transformer.``: the
  ``transformers`` names, with ``text_model.``.
- Second text encoder (OpenCLIP bigG), under ``conditioner.embedders.1.model.``:
  ``token_embedding``, ``positional_embedding``, ``transformer.resblocks.i`` with ``ln_1``,
  ``attn.in_proj_{weight,bias}`` (q, k, v stacked), ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``,
  ``mlp.c_proj``; ``ln_final``; ``text_projection`` (transposed).
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["sdxl_single_file_state_dict", "write_sdxl_single_file"]

RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{RESNET_NAMES.get(name, name)}.{tail}"


def _unet_key(key: str, config: Any) -> str:
    """One diffusers UNet key → its original name."""
    per_level = config.layers_per_block + 1
    for new, old in UNET_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * per_level}.0.op.{rest.removeprefix('conv.')}"
        block = 1 + level * per_level + j
        return f"input_blocks.{block}." + (
            f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
        )
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        return (
            f"middle_block.{2 * j}.{_resnet(rest)}"
            if kind == "resnets"
            else f"middle_block.1.{rest}"
        )
    if parts[0] == "up_blocks":
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "upsamplers":
            after = 2 if "CrossAttn" in config.up_block_types[level] else 1  # after its attention
            return f"output_blocks.{(level + 1) * per_level - 1}.{after}.{rest}"
        block = level * per_level + j
        return f"output_blocks.{block}." + (
            f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
        )
    raise ValueError(f"no original name for UNet key {key!r}")


def _vae_key(key: str, levels: int) -> str:
    """One diffusers VAE key → its original name (without the prefix)."""
    parts = key.split(".")
    coder, block = parts[0], parts[1]
    if block in ("down_blocks", "up_blocks"):
        i, kind, rest = int(parts[2]), parts[3], ".".join(parts[4:])
        name = f"down.{i}" if block == "down_blocks" else f"up.{levels - 1 - i}"
        if kind in ("downsamplers", "upsamplers"):
            sampler = "downsample" if kind == "downsamplers" else "upsample"
            return f"{coder}.{name}.{sampler}.{rest.removeprefix('0.')}"
        j, _, tail = rest.partition(".")
        return f"{coder}.{name}.block.{j}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
    if block == "mid_block":
        kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        for new, old in VAE_ATTENTION.items():
            if rest.startswith(new + "."):
                return f"{coder}.mid.attn_1.{old}{rest[len(new) :]}"
    if block == "conv_norm_out":
        return f"{coder}.norm_out.{parts[2]}"
    return key


def _open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict → OpenCLIP's text-tower names."""
    state = {
        k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
        for k, v in state.items()
    }
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    prefix = "text_model.encoder.layers."
    layers = sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for i in layers:
        src, dst = f"{prefix}{i}.", f"transformer.resblocks.{i}."
        for new, old in names.items():
            for p in ("weight", "bias"):
                out[f"{dst}{old}.{p}"] = state[f"{src}{new}.{p}"]
        for p in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"]
            out[f"{dst}attn.in_proj_{p}"] = torch.cat(qkv)  # (3·width, …)
    return out


def sdxl_single_file_state_dict(components: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``unet``, ``vae``, ``text_encoder``, ``text_encoder_2`` → one original-format state dict."""
    unet, vae = components["unet"], components["vae"]
    out = {
        f"model.diffusion_model.{_unet_key(k, unet.config)}": v
        for k, v in unet.state_dict().items()
    }
    levels = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        name = _vae_key(key, levels)
        if ".mid.attn_1." in name and value.ndim == 2:
            value = value[:, :, None, None]  # linear → 1×1 convolution
        out[f"first_stage_model.{name}"] = value
    for key, value in components["text_encoder"].state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"conditioner.embedders.0.transformer.{key}"] = value
    for key, value in _open_clip(components["text_encoder_2"].state_dict()).items():
        out[f"conditioner.embedders.1.model.{key}"] = value
    return {k: v.detach().contiguous() for k, v in out.items()}


def write_sdxl_single_file(components: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``sdxl_single_file_state_dict(components)`` as one ``.safetensors`` file."""
    from safetensors.torch import save_file

    save_file(sdxl_single_file_state_dict(components), str(path))
