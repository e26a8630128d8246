"""What every MS-Diffusion pipeline does with its adapter: attach it, load it in one call (our
format or the released ``ms_adapter.bin``, from disk or the hub), save and load it with the
pipeline (``save_pretrained`` / ``from_pretrained``, ``from_single_file``, ``from_pipe``), and keep
its attention processors through every diffusers way of changing them.

diffusers' pipeline-level attention choices either keep the multi-subject branch or are refused:

- ``enable_attention_slicing`` / ``disable_attention_slicing``: the MS-Diffusion processors slice
  heads themselves; the other components get diffusers' slicing as usual.
- ``fuse_qkv_projections`` / ``unfuse_qkv_projections``: the processors use the fused ``to_qkv`` /
  ``to_kv``.
- ``enable_xformers_memory_efficient_attention``: refused for the UNet while the adapter is
  installed (the processors already run PyTorch's memory-efficient SDPA); other components as usual.
- ``unet.set_default_attn_processor()``: refused by diffusers, with our processors' explanation.
- ``load_ip_adapter``: its processors replace the MS-Diffusion ones; a call then takes IP-Adapter
  images and no subjects (``call_checks``). ``unload_ip_adapter`` keeps the image encoder, which
  the subjects need; ``attach_adapter(pipe.adapter)`` brings the MS-Diffusion processors back.

A change made on the UNet directly (``pipe.unet.set_attention_slice``, ``set_attn_processor``)
replaces the processors; a call with subjects then fails with what to do
(``check_processors``), never silently without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from ..atomic import atomic_write_json
from ..configs import read_json
from ..errors import InputError
from ..hub import HubOptions, fetch_file, is_local
from ..models.adapter import CONFIG_NAME, WEIGHTS_NAME, MSAdapter
from ..models.attention import configure_processors

__all__ = ["AdapterMixin", "ADAPTER_FOLDER"]

REINSTALL = "re-install them with pipe.attach_adapter(pipe.adapter)"
ADAPTER_FOLDER = "adapter"


class AdapterMixin:
    """Adapter handling of the MS-Diffusion pipelines (expects ``unet``, ``adapter`` components)."""

    unet: Any
    adapter: MSAdapter | None
    image_encoder: Any
    feature_extractor: Any

    # -- construction -----------------------------------------------------------------------------
    @staticmethod
    def _default_preprocessing(image_encoder: Any, feature_extractor: Any) -> Any:
        """The image encoder's CLIP preprocessing when none is given."""
        if feature_extractor is None and image_encoder is not None:
            from ..encoding import clip_preprocessing

            return clip_preprocessing(image_encoder)
        return feature_extractor

    def _register_adapter(self, adapter: MSAdapter | None) -> None:
        """Register ``adapter`` as a component and install it on the UNet (``__init__``; again
        for the same UNet under ``from_pipe`` — installing keeps the processors it replaces)."""
        self.register_modules(adapter=adapter)
        if adapter is not None:
            adapter.install(self.unet)

    # -- saving and loading -----------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """diffusers' folder layout (the UNet is plain SDXL: the adapter holds its weights) and
        the adapter in ``adapter/`` (our format); ``from_pretrained`` restores both, from disk or
        the hub."""
        adapter = self.adapter
        self.register_modules(adapter=None)  # diffusers cannot save it: our format does
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_modules(adapter=adapter)
        if adapter is not None:
            adapter.save_pretrained(Path(save_directory) / ADAPTER_FOLDER)
            index = Path(save_directory) / "model_index.json"
            entries = read_json(index, "model_index.json")
            entries["adapter"] = ["msdiffusion", "MSAdapter"]  # where from_pretrained looks
            atomic_write_json(index, entries)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any):
        """diffusers' ``from_pretrained`` plus the adapter: passed as ``adapter=`` (None: none),
        or — for a pipeline ``save_pretrained`` wrote, on disk or on the hub — its
        ``adapter/``. ``revision``, ``local_files_only``, ``cache_dir``, ``token`` apply to
        both."""
        searched = "adapter" not in kwargs
        adapter = kwargs.pop("adapter", None)
        pipe = super().from_pretrained(pretrained_model_name_or_path, adapter=None, **kwargs)
        if searched and cls._saves_an_adapter(pretrained_model_name_or_path, kwargs):
            hub = {k: kwargs[k] for k in HubOptions.__dataclass_fields__ if k in kwargs}
            hub.pop("subfolder", None)
            options = HubOptions(subfolder=ADAPTER_FOLDER, **hub)
            weights = fetch_file(
                pretrained_model_name_or_path, WEIGHTS_NAME, options, what="pipeline's adapter"
            )
            adapter = MSAdapter.from_pretrained(weights)
        pipe._attach_loaded(adapter, kwargs.get("torch_dtype"))
        return pipe

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | os.PathLike[str], **kwargs: Any):
        """diffusers' ``from_single_file`` (one ``.safetensors`` / ``.ckpt`` holding the UNet,
        VAE and text encoders of an SDXL checkpoint — a fine-tune, say; ``config=`` a diffusers
        folder or repository with the matching configs and tokenizers) plus ``image_encoder=``
        and ``adapter=``, which the file does not hold."""
        adapter = kwargs.pop("adapter", None)
        pipe = super().from_single_file(str(pretrained_model_link_or_path), adapter=None, **kwargs)
        pipe._attach_loaded(adapter, kwargs.get("torch_dtype"))
        return pipe

    def _attach_loaded(self, adapter: MSAdapter | None, dtype: Any) -> None:
        if adapter is not None:
            dtype = dtype if isinstance(dtype, torch.dtype) else self.unet.dtype
            self.attach_adapter(adapter.to(self.unet.device, dtype))

    @classmethod
    def _saves_an_adapter(cls, source: str | os.PathLike[str], kwargs: dict[str, Any]) -> bool:
        """Whether ``source`` is a pipeline folder or repository with an ``adapter/`` of ours."""
        if is_local(source):
            return (Path(source) / ADAPTER_FOLDER / CONFIG_NAME).is_file()
        hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token") if k in kwargs}
        config = cls.load_config(source, local_files_only=True, **hub)
        return list(config.get("adapter") or [None, None])[1:] == ["MSAdapter"]

    # -- the adapter ------------------------------------------------------------------------------
    def _adapter_installed(self) -> bool:
        return self.adapter is not None and self.adapter.is_installed(self.unet)

    def attach_adapter(self, adapter: MSAdapter | None) -> None:
        """Use ``adapter`` (installing its processors on the UNet), or none: the processors an
        earlier adapter replaced come back."""
        current = self.adapter
        if current is not None and current is not adapter:
            current.uninstall(self.unet, missing_ok=True)
        self.register_modules(adapter=adapter)
        if adapter is not None:
            adapter.install(self.unet)

    def load_ms_adapter(
        self,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        weight_name: str | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        **hparams: Any,
    ) -> MSAdapter:
        """Load an adapter and attach it, in one call (like ``load_ip_adapter``): our format (a
        folder with ``adapter.safetensors``) or the released ``ms_adapter.bin``, from disk or a
        hub repository (``weight_name`` picks the file; ours is looked for first). ``hparams``:
        adapter hyper-parameters of a released-format file that is not the release's
        configuration. It is cast to the UNet's device and dtype."""
        adapter = MSAdapter.load(
            pretrained_model_name_or_path,
            self.unet,
            weight_name=weight_name,
            hparams=hparams,
            subfolder=subfolder,
            revision=revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            token=token,
        )
        adapter = adapter.to(self.unet.device, self.unet.dtype)
        self.attach_adapter(adapter)
        return adapter

    def check_processors(self) -> None:
        """Raise unless the UNet runs this pipeline's MS-Diffusion processors everywhere (a call
        with subjects needs them)."""
        if self.adapter is None:
            raise InputError(
                "subjects",
                "need an MS-Diffusion adapter: load one with pipe.load_ms_adapter(path_or_repo)",
                None,
            )
        foreign = self.adapter.foreign_processors(self.unet)
        if foreign:
            found = ", ".join(f"{n} × {c}" for n, c in sorted(foreign.items()))
            raise InputError(
                "subjects",
                "need the MS-Diffusion attention processors, but the UNet's were replaced (by a "
                f"change made on pipe.unet directly?): {REINSTALL} — pipe.enable_attention_"
                "slicing() and pipe.fuse_qkv_projections() keep them",
                found,
            )

    # -- diffusers' attention choices -------------------------------------------------------------
    def set_attention_slice(self, slice_size: int | str | None) -> None:
        """diffusers' attention slicing (``enable_attention_slicing``): with the adapter
        installed, its processors slice themselves; other components as diffusers does."""
        if not self._adapter_installed():
            super().set_attention_slice(slice_size)
            return
        for module in self._other_modules():
            if hasattr(module, "set_attention_slice"):
                module.set_attention_slice(slice_size)
        configure_processors(self.unet, slice_size=slice_size)

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """diffusers' fused QKV projections; with the adapter installed, its processors use them."""
        ours = unet and self._adapter_installed()
        super().fuse_qkv_projections(unet=unet and not ours, vae=vae)
        if ours:
            for module in self.unet.modules():
                if isinstance(module, Attention):
                    module.fuse_projections(fuse=True)
            configure_processors(self.unet, fused=True)
            self.fusing_unet = True

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        if unet and getattr(self, "fusing_unet", False) and self._adapter_installed():
            configure_processors(self.unet, fused=False)
            self.fusing_unet = False
            unet = False
        super().unfuse_qkv_projections(unet=unet, vae=vae)

    def set_use_memory_efficient_attention_xformers(
        self, valid: bool, attention_op: Any = None
    ) -> None:
        """xFormers attention for the other components; refused for the UNet while the adapter
        is installed (its processors run PyTorch's memory-efficient SDPA already)."""
        if not self._adapter_installed():
            super().set_use_memory_efficient_attention_xformers(valid, attention_op)
            return
        if valid:
            raise InputError(
                "enable_xformers_memory_efficient_attention",
                "would replace the MS-Diffusion attention processors, which already run "
                "PyTorch's memory-efficient scaled-dot-product attention: leave it off (for the "
                "VAE alone: pipe.vae.enable_xformers_memory_efficient_attention())",
                True,
            )
        for module in self._other_modules():
            if hasattr(module, "set_use_memory_efficient_attention_xformers"):
                module.set_use_memory_efficient_attention_xformers(False)

    def unload_ip_adapter(self) -> None:
        """diffusers' ``unload_ip_adapter``, keeping the image encoder and its preprocessing
        (diffusers drops them): they encode this pipeline's subjects. The MS-Diffusion
        processors come back with ``pipe.attach_adapter(pipe.adapter)``."""
        encoder, extractor = self.image_encoder, self.feature_extractor
        super().unload_ip_adapter()
        self.register_modules(image_encoder=encoder, feature_extractor=extractor)

    def _other_modules(self) -> list[torch.nn.Module]:
        names, _ = self._get_signature_keys(self)
        modules = [getattr(self, n, None) for n in names]
        return [m for m in modules if isinstance(m, torch.nn.Module) and m is not self.unet]
