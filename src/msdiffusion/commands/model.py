"""The model a command generates with: its flags, their record in every sidecar, and loading.

:class:`ModelSettings` holds every model flag of ``generate`` and ``ui`` — the components
(``--preset``, ``--base``, …), where and how they run (``--device``, ``--dtype``, ``--offload``,
``--vae-tiling``) and what is added on top (``--lora``, ``--controlnet``). Its :meth:`record`
goes into each sidecar's ``model.settings``; :func:`settings_from_sidecar` reads it back, so a
replay loads the model its image was made with (see :mod:`.replay`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..flags import add_flag, with_default

__all__ = [
    "ModelSettings",
    "PIXEL_SETTINGS",
    "OFFLOAD_MODES",
    "add_model_arguments",
    "model_flags",
    "absolute_path",
    "settings_from_sidecar",
    "check_device",
    "load_model",
]

OFFLOAD_MODES = ("none", "model", "sequential")
SHORT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class ModelSettings:
    """Every model flag, as given (``None``: the preset's or the default)."""

    preset: str = "tiny"
    base: str | None = None
    base_config: str | None = None
    image_encoder: str | None = None
    adapter: str | None = None
    vae: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    lora: tuple[str, ...] = ()
    lora_scale: float = 1.0
    controlnet: str | None = None
    offload: str = "none"
    vae_tiling: bool = False

    def record(self, device: str, dtype: str) -> dict[str, Any]:
        """The settings as a sidecar keeps them: paths absolute, the device type and dtype the
        model resolved to (``auto`` never stays ``auto``), the LoRA in use."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in PATH_SETTINGS:
            data[key] = absolute_path(data[key])
        data["lora"] = [absolute_path(p) for p in self.lora]
        data["device"] = device.split(":")[0]
        data["dtype"] = SHORT_DTYPES.get(dtype, dtype)
        return data


# the settings that name a component by path or hub id
PATH_SETTINGS = ("base", "base_config", "image_encoder", "adapter", "vae", "controlnet")
# the settings that change an image's pixels (offload only moves weights between devices)
PIXEL_SETTINGS = tuple(f.name for f in fields(ModelSettings) if f.name != "offload")


def absolute_path(value: str | None) -> str | None:
    """A local path made absolute (a sidecar replays from any folder); a hub id as it is."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def add_model_arguments(
    parser: argparse.ArgumentParser, *, default: Any = None, loras: str = "one"
) -> None:
    """The model flags of ``generate`` and ``ui``. ``default=argparse.SUPPRESS``: a flag not
    given stays out of the namespace (``generate`` tells them from a sidecar's settings); the
    help shows the real defaults either way. ``loras="many"``: the page offers a choice."""
    own = ModelSettings()

    def value(name: str) -> Any:
        return default if default is argparse.SUPPRESS else getattr(own, name)

    group = parser.add_argument_group("model")
    add_flag(group, "preset", default=value("preset"), shown=own.preset)
    for key in ("base", "image_encoder", "adapter"):
        add_flag(group, key, default=value(key), shown="the preset's")
    add_flag(group, "base_config", default=value("base_config"), shown="the preset's base")
    add_flag(group, "vae", default=value("vae"), shown="the base's")
    add_flag(group, "device", default=value("device"), shown=own.device)
    add_flag(group, "dtype", default=value("dtype"), shown=own.dtype)
    many = "; repeatable: the page offers each" if loras == "many" else ""
    group.add_argument(
        "--lora",
        action="append",
        default=default if default is argparse.SUPPRESS else [],
        metavar="PATH",
        help=f"LoRA weights for SDXL (a diffusers or kohya .safetensors, or its folder){many} "
        "(default: none)",
    )
    group.add_argument(
        "--lora-scale",
        type=float,
        default=value("lora_scale"),
        metavar="X",
        help=with_default("strength of the LoRA", own.lora_scale),
    )
    group.add_argument(
        "--controlnet",
        metavar="DIR|ID",
        default=value("controlnet"),
        help="SDXL ControlNet folder or hub id; every request then needs a control image "
        "(default: none)",
    )
    group.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default=value("offload"),
        help="keep weights on the CPU until needed (GPU only): model (one model at a time) or "
        "sequential (layer by layer: least memory, slowest) (default: none)",
    )
    group.add_argument(
        "--vae-tiling",
        action="store_true",
        default=value("vae_tiling"),
        help="decode in tiles: less memory for large images, seams blended (default: off)",
    )


def model_flags(args: argparse.Namespace, *, one_lora: bool = False) -> dict[str, Any]:
    """The model flags in ``args`` (only those given, when they were added with SUPPRESS),
    checked: LoRA files there, a scale >= 0."""
    names = [f.name for f in fields(ModelSettings)]
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    loras = list(given.get("lora") or [])
    if one_lora and len(loras) > 1:
        raise InputError(
            "--lora", "takes one LoRA per command (the web page offers several)", loras
        )
    for path in loras:
        if not Path(path).exists():
            raise InputError("--lora", "no LoRA file or folder there", path)
    if "lora" in given:
        given["lora"] = tuple(loras)
    scale = given.get("lora_scale", 1.0)
    if not scale >= 0:
        raise InputError("--lora-scale", "must be a number >= 0", scale)
    return given


def settings_from_sidecar(model: dict[str, Any]) -> dict[str, Any]:
    """The model settings a sidecar's ``model`` block records. Sidecars written before the block
    had ``settings`` give what their description allows: preset, device type and dtype, and the
    component paths that are not the preset's own."""
    if isinstance(model.get("settings"), dict):
        known = {f.name for f in fields(ModelSettings)}
        settings = {k: v for k, v in model["settings"].items() if k in known}
        if "lora" in settings:
            settings["lora"] = tuple(settings["lora"] or ())
        return settings
    from ..presets import PRESETS

    preset = model.get("preset", "tiny")
    settings: dict[str, Any] = {"preset": preset}
    if model.get("device"):
        settings["device"] = str(model["device"]).split(":")[0]
    if model.get("dtype"):
        settings["dtype"] = SHORT_DTYPES.get(model["dtype"], model["dtype"])
    spec = PRESETS.get(preset)
    defaults = {}
    if spec is not None:
        encoder = spec.image_encoder
        if encoder and spec.image_encoder_subfolder:
            encoder = f"{encoder}/{spec.image_encoder_subfolder}"
        adapter = spec.adapter
        if adapter and spec.adapter_filename:
            adapter = f"{adapter}/{spec.adapter_filename}"
        defaults = {"base": spec.base, "image_encoder": encoder, "adapter": adapter}
    for key in ("base", "image_encoder", "adapter", "vae"):
        value = model.get(key)
        if value and not str(value).startswith("tiny (") and value != defaults.get(key):
            settings[key] = value
    return settings


def check_device(settings: ModelSettings) -> None:
    """The device and dtype flags against this machine (before anything loads)."""
    from ..runtime import check_dtype_name, resolve_device

    check_dtype_name(settings.dtype, "--dtype")
    device = resolve_device(settings.device, "--device")
    if settings.offload != "none" and device.type != "cuda":
        raise InputError(
            "--offload",
            "needs a CUDA device (it moves weights between the CPU and the GPU)",
            settings.offload,
            show_value=False,
        )


def load_model(settings: ModelSettings) -> Any:
    """The ready model (``msdiffusion.loading.LoadedModel``) with the LoRA, ControlNet, offload
    and VAE tiling applied; ``info["settings"]`` records them for the sidecars."""
    check_device(settings)
    from ..loading import load_pipeline
    from ..runtime import load_or_explain

    model = load_pipeline(
        settings.preset,
        base=settings.base,
        base_config=settings.base_config,
        image_encoder=settings.image_encoder,
        adapter=settings.adapter,
        vae=settings.vae,
        device=settings.device,
        dtype=settings.dtype,
    )
    pipe = model.pipe
    if settings.controlnet is not None:
        from diffusers import ControlNetModel

        controlnet = load_or_explain(
            lambda: ControlNetModel.from_pretrained(settings.controlnet, dtype=pipe.unet.dtype),
            what="ControlNet",
            source=settings.controlnet,
            fix="pass a local SDXL ControlNet folder with --controlnet PATH",
        )
        pipe.register_modules(controlnet=controlnet.to(pipe.unet.device))
    for k, path in enumerate(settings.lora):
        load_or_explain(
            lambda path=path, k=k: pipe.load_lora_weights(path, adapter_name=f"lora{k}"),
            what="LoRA",
            source=path,
            fix="pass a diffusers or kohya LoRA .safetensors (or its folder) made for SDXL",
        )
    if settings.lora:
        use_lora(pipe, 0, settings.lora_scale)
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.offload == "model":
        pipe.enable_model_cpu_offload(device=pipe.unet.device)
    elif settings.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=pipe.unet.device)
    info = dict(model.info)
    info["settings"] = settings.record(info.get("device", "cpu"), info.get("dtype", "fp32"))
    if info["settings"]["device"] == "cpu":  # CPU kernels split their sums by thread
        import torch

        info["threads"] = torch.get_num_threads()
    return replace(model, info=info)


def use_lora(pipe: Any, index: int | None, scale: float) -> None:
    """Switch the LoRA in use: the ``index``-th loaded one at ``scale``, or none."""
    if index is None:
        pipe.disable_lora()
        return
    pipe.enable_lora()
    pipe.set_adapters([f"lora{index}"], adapter_weights=[scale])
