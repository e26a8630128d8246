"""Loading models — the one path inference, training and evaluation share: by preset (``tiny``:
random weights; ``toy``: the toy world's model; ``sdxl``: the released model) with any component
replaced by a local folder or a hub id.

One set of rules for all of them:

- the VAE: ``vae`` if given, else the preset's (the fp16-fix VAE for ``sdxl``); ``vae="base"``
  keeps the base pipeline's own;
- the CLIP preprocessing: the image encoder's saved ``preprocessor_config.json``, else CLIP's at
  the encoder's own size (``encoding.clip_preprocessing``);
- a single-file base (a ``.safetensors`` / ``.ckpt`` SDXL checkpoint, e.g. a fine-tune) loads
  with diffusers' ``from_single_file``, its configs and tokenizers from ``base_config`` (a
  diffusers SDXL folder or hub id; by default the preset's base); the file's SHA-256 goes into
  the model description every sidecar carries;
- offline first: every part is looked for on disk and in the hub cache before anything loads;
  with parts missing and no hub to fetch them from (offline, or unreachable), one error lists
  every missing part with the command that downloads it — no retries against a network that is
  not there. A part that is there but does not load says so (``runtime.load_or_explain``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .encoding import PREPROCESSOR_CONFIG, clip_preprocessing
from .errors import InputError, ModelNotAvailableError
from .hub import HubOptions, cached_file, download_command, hub_reachable, is_local
from .models.adapter import RELEASED_NAME, WEIGHTS_NAME
from .presets import PRESETS, TOY_MODEL, Preset
from .runtime import dtype_label, load_or_explain, resolve_device, resolve_dtype
from .testing.sdxl import adapter_kwargs, random_components

__all__ = [
    "LoadedModel",
    "Part",
    "model_parts",
    "require_parts",
    "load_sdxl_components",
    "load_pipeline",
    "load_adapter",
    "is_single_file",
    "file_sha256",
    "BASE_VAE",
]

TINY_HINT = "or use --preset tiny to try the package without weights"
BASE_VAE = "base"  # vae=BASE_VAE: the base pipeline's own VAE
SDXL_PARTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def is_single_file(source: str | None) -> bool:
    """Whether a base is one checkpoint file (a local ``.safetensors`` / ``.ckpt``)."""
    return (
        source is not None
        and is_local(source)
        and os.path.splitext(source)[1].lower() in SINGLE_FILE_SUFFIXES
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 16 MiB chunks; remembered while the file's size and
    modification time stay the same (a checkpoint is hashed once per process)."""
    full = os.path.abspath(os.path.expanduser(path))
    stat = os.stat(full)
    return _sha256(full, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A ready pipeline and a description of what it was built from (for sidecars)."""

    pipe: Any
    info: dict[str, Any]
    default_size: int
    _editing: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def pipeline(self, kind: str = "text-to-image") -> Any:
        """The pipeline for a request of ``kind`` (``GenerationRequest.kind``): ``pipe`` itself
        for text-to-image, else its image-to-image or inpainting pipeline, made once with
        ``from_pipe`` (the same components and adapter, no more memory)."""
        if kind == "text-to-image":
            return self.pipe
        if kind not in self._editing:
            from .pipelines.pipeline_msdiffusion_xl_img2img import MSDiffusionXLImg2ImgPipeline
            from .pipelines.pipeline_msdiffusion_xl_inpaint import MSDiffusionXLInpaintPipeline

            kinds = {
                "image-to-image": MSDiffusionXLImg2ImgPipeline,
                "inpainting": MSDiffusionXLInpaintPipeline,
            }
            if kind not in kinds:
                raise InputError("kind", f"must be text-to-image or one of {sorted(kinds)}", kind)
            self._editing[kind] = kinds[kind].from_pipe(self.pipe)
        return self._editing[kind]


@dataclass(frozen=True)
class Part:
    """One component to load: what it is, where from, and the file that shows it is there."""

    what: str  # "SDXL base", "image encoder", "VAE", "MS-Diffusion adapter"
    source: str
    markers: tuple[str, ...]  # files of which one shows it is there (none: anything at source)
    option: str  # how the user sets it: "--base" / "model.base"
    subfolder: str | None = None

    @property
    def local(self) -> bool:
        return is_local(self.source)

    @property
    def options(self) -> HubOptions:
        return HubOptions(subfolder=self.subfolder)

    def _found(self) -> Path | None:
        """The path of the first marker on disk or in the hub cache."""
        if self.local:
            path = Path(os.path.expanduser(self.source))
            path = path / self.subfolder if self.subfolder else path
            if not self.markers:
                return path if path.exists() else None
            return next((path / m for m in self.markers if (path / m).is_file()), None)
        return next(
            (f for m in self.markers if (f := cached_file(self.source, m, self.options))), None
        )

    def present(self) -> bool:
        """On disk, or in the hub cache."""
        return self._found() is not None

    def folder(self) -> Path | None:
        """The local folder holding it (on disk or in the cache), when there is one."""
        found = self._found()
        return None if found is None else found if found.is_dir() else found.parent

    def fix(self) -> str:
        if self.local:
            path = Path(os.path.expanduser(self.describe()))
            wanted = " or ".join(self.markers)
            what = f"no {wanted} in that folder" if path.is_dir() else "no such file or folder"
            return f"{what}: pass {self.option} PATH"
        single = len(self.markers) == 1 and not self.markers[0].endswith(".json")
        command = download_command(self.source, self.options, self.markers[0] if single else None)
        return f"`{command}` (or pass {self.option} PATH)"

    def describe(self) -> str:
        return self.source if not self.subfolder else f"{self.source}/{self.subfolder}"


def model_parts(
    preset: str,
    *,
    base: str | None = None,
    image_encoder: str | None = None,
    image_encoder_subfolder: str | None = None,
    vae: str | None = None,
    adapter: str | None = None,
    base_config: str | None = None,
    with_adapter: bool = True,
    option_names: dict[str, str] | None = None,
) -> list[Part]:
    """The parts a preset with these replacements needs (nothing for ``tiny`` without a base).
    A single-file ``base`` adds its configs (``base_config``, by default the preset's base).
    ``option_names``: how each part is set where the caller takes it (default: the CLI flags)."""
    if preset not in PRESETS:
        raise InputError("preset", f"must be one of {sorted(PRESETS)}", preset)
    spec = PRESETS[preset]
    names = {
        "base": "--base",
        "image_encoder": "--image-encoder",
        "vae": "--vae",
        "adapter": "--adapter",
        "base_config": "--base-config",
        **(option_names or {}),
    }
    if base_config is not None and not is_single_file(base):
        raise InputError(
            names["base_config"],
            f"only applies with a checkpoint file (.safetensors / .ckpt) as {names['base']}",
            base_config,
        )
    if preset == "tiny" and base is None:
        parts = []
    else:
        subfolder = image_encoder_subfolder if image_encoder else spec.image_encoder_subfolder
        single = is_single_file(base)
        parts = [
            Part(
                "SDXL base",
                base or spec.base,
                () if single else ("model_index.json",),
                names["base"],
            ),
            Part(
                "image encoder",
                image_encoder or spec.image_encoder,
                ("config.json",),
                names["image_encoder"],
                subfolder or None,
            ),
        ]
        if single:
            configs = base_config or spec.base
            if configs is None:
                raise InputError(
                    names["base_config"],
                    f"is needed with a single-file base: a diffusers SDXL folder or hub id whose "
                    f"configs and tokenizers fit it (the {preset} preset has none)",
                    None,
                )
            parts.append(Part("SDXL configs", configs, ("model_index.json",), names["base_config"]))
        vae_source = vae or spec.vae
        if vae_source is not None and vae_source != BASE_VAE:
            parts.append(Part("VAE", vae_source, ("config.json",), names["vae"]))
    adapter_source = adapter or (spec.adapter if preset != "tiny" else None)
    if with_adapter and adapter_source is not None:
        markers = (
            (spec.adapter_filename,)
            if adapter is None and spec.adapter_filename
            else ()
            if is_local(adapter_source)
            else (WEIGHTS_NAME, RELEASED_NAME)
        )
        parts.append(Part("MS-Diffusion adapter", adapter_source, markers, names["adapter"]))
    return parts


def require_parts(parts: list[Part], hint: str = TINY_HINT) -> bool:
    """Check every part before loading any; returns whether loaders may download (False: they
    must use local files only). Raises one ``ModelNotAvailableError`` listing every missing part
    and its download command when they cannot be fetched."""
    missing = [p for p in parts if not p.present()]
    fetchable = [p for p in missing if not p.local]
    online = bool(fetchable) and hub_reachable()
    blocked = [p for p in missing if p.local or not online]
    if blocked:
        from huggingface_hub import constants

        why = (
            "not on disk"
            if all(p.local for p in blocked)
            else "offline (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else "the model hub cannot be reached"
        )
        toy = any(Path(p.source).resolve().is_relative_to(TOY_MODEL) for p in blocked if p.local)
        listed = "; ".join(f"the {p.what} {p.describe()!r}: {p.fix()}" for p in blocked)
        extra = " — `make learn` trains the toy model (docs/toyworld.md)" if toy else ""
        raise ModelNotAvailableError(
            f"{len(blocked)} model part(s) missing ({why}): {listed}{extra}; {hint}"
        )
    return online


def _load(part: Part, load: Any, hint: str) -> Any:
    return load_or_explain(
        load, what=part.what, source=part.describe(), fix=f"{part.fix()}, {hint}"
    )


def load_sdxl_components(
    parts: list[Part],
    *,
    dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    with_unet: bool = True,
    download: bool = True,
    hint: str = TINY_HINT,
) -> dict[str, Any]:
    """The frozen components (CPU): vae, text_encoder(_2), tokenizer(_2), unet (None unless
    ``with_unet``), scheduler, image_encoder, feature_extractor, and the base pipeline's
    ``force_zeros_for_empty_prompt`` — from the SDXL base, image
    encoder and VAE parts (``model_parts``), in ``dtype`` (a separate VAE in ``vae_dtype``, by
    default ``dtype``); ``download`` False: local files only. ``HF_HUB_DISABLE_PROGRESS_BARS``
    (the command line sets it when stderr is no terminal) also silences diffusers' loading bars,
    as it does the hub's and transformers'."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers import CLIPVisionModelWithProjection

    if are_progress_bars_disabled():
        diffusers_logging.disable_progress_bar()

    by_what = {p.what: p for p in parts}
    local_only = {"local_files_only": not download}
    encoder_part, base_part = by_what["image encoder"], by_what["SDXL base"]
    encoder = _load(
        encoder_part,
        lambda: CLIPVisionModelWithProjection.from_pretrained(
            encoder_part.source,
            subfolder=encoder_part.subfolder or "",
            torch_dtype=dtype,
            **local_only,
        ),
        hint,
    )
    extra: dict[str, Any] = {} if with_unet else {"unet": None}
    if "VAE" in by_what:
        vae_part = by_what["VAE"]
        extra["vae"] = _load(
            vae_part,
            lambda: AutoencoderKL.from_pretrained(
                vae_part.source, torch_dtype=vae_dtype or dtype, **local_only
            ),
            hint,
        )
    if "SDXL configs" in by_what:  # one checkpoint file; configs and tokenizers from a pipeline
        config_part = by_what["SDXL configs"]
        pipe = _load(
            base_part,
            lambda: StableDiffusionXLPipeline.from_single_file(
                os.path.expanduser(base_part.source),
                config=str(config_part.folder()),
                torch_dtype=dtype,
                **local_only,
                **extra,
            ),
            hint,
        )
    else:
        pipe = _load(
            base_part,
            lambda: StableDiffusionXLPipeline.from_pretrained(
                base_part.source, torch_dtype=dtype, **local_only, **extra
            ),
            hint,
        )
    components = {k: pipe.components[k] for k in (*SDXL_PARTS, "unet")}
    # the base's own unconditional rule (a base trained on encoded empty captions says False)
    components["force_zeros_for_empty_prompt"] = bool(
        pipe.config.get("force_zeros_for_empty_prompt", True)
    )
    components["image_encoder"] = encoder
    folder = encoder_part.folder()
    has_config = folder is not None and (folder / PREPROCESSOR_CONFIG).is_file()
    components["feature_extractor"] = clip_preprocessing(encoder, folder if has_config else None)
    return components


def load_adapter(
    source: str, unet: torch.nn.Module, filename: str | None = None, *, download: bool = True
) -> Any:
    """An adapter in either format — our folder or ``.safetensors``, a released ``.bin``, or a
    hub repository (ours looked for first; ``filename`` picks the file)."""
    from .models.adapter import MSAdapter

    if is_local(source) and not os.path.exists(os.path.expanduser(source)):
        raise InputError("adapter", "no adapter folder or checkpoint file there", source)
    return MSAdapter.load(source, unet, weight_name=filename, local_files_only=not download)


def load_pipeline(
    preset: str = "tiny",
    *,
    base: str | None = None,
    image_encoder: str | None = None,
    adapter: str | None = None,
    vae: str | None = None,
    base_config: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Build the pipeline of ``preset`` ("tiny", "toy" or "sdxl"); any component may be a local
    path or a hub id, the base also one checkpoint file (``base_config``: its configs, by
    default the preset's base); ``vae="base"`` keeps the base pipeline's VAE."""
    from .models.adapter import MSAdapter
    from .pipelines.pipeline_msdiffusion_xl import MSDiffusionXLPipeline

    parts = model_parts(
        preset,
        base=base,
        image_encoder=image_encoder,
        vae=vae,
        adapter=adapter,
        base_config=base_config,
    )
    spec: Preset = PRESETS[preset]
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    download = require_parts(parts)  # every missing part at once, before anything loads
    info: dict[str, Any] = {
        "preset": preset,
        "device": str(torch_device),
        "dtype": dtype_label(torch_dtype),
    }
    if preset == "tiny" and base is None:
        components = random_components("tiny", seed=0)
        if adapter is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                ms_adapter = MSAdapter.for_unet(components["unet"], **adapter_kwargs("tiny"))
        else:
            ms_adapter = load_adapter(adapter, components["unet"], download=download)
        pipe = MSDiffusionXLPipeline(**components, adapter=ms_adapter)
        info.update(
            base="tiny (random weights)",
            image_encoder="tiny (random weights)",
            adapter=adapter or "tiny (random weights, seed 0)",
        )
    else:
        components = load_sdxl_components(parts, dtype=torch_dtype, download=download)
        pipe = MSDiffusionXLPipeline(**components)
        adapter_part = next(p for p in parts if p.what == "MS-Diffusion adapter")
        filename = spec.adapter_filename if adapter is None else None
        ms_adapter = load_adapter(adapter_part.source, pipe.unet, filename, download=download)
        pipe.attach_adapter(ms_adapter.to(torch_dtype))
        by_what = {p.what: p.describe() for p in parts}
        info.update(
            base=by_what["SDXL base"],
            image_encoder=by_what["image encoder"],
            adapter=adapter or f"{spec.adapter}/{spec.adapter_filename}",
            vae=by_what.get("VAE", BASE_VAE),
        )
        if "SDXL configs" in by_what:
            info.update(base_config=by_what["SDXL configs"], base_sha256=file_sha256(base or ""))
    if pipe.unet.dtype != torch_dtype:  # tiny components are built in float32
        pipe.to(dtype=torch_dtype)
    pipe.to(torch_device)
    return LoadedModel(pipe=pipe, info=info, default_size=spec.default_size)
