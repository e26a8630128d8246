"""Training configuration: a JSON file of nested sections, overridable from the command line.

Every field has the released recipe's value as default (DESIGN §2.4). A config file only needs the
fields it changes::

    {"data": {"manifest": "data/train.jsonl", "resolution": 512},
     "model": {"preset": "sdxl"},
     "max_steps": 120000, "batch_size": 8}

Overrides use dotted keys with JSON values (``optim.learning_rate=2e-4``, ``data.crop="random"``;
a value that is not valid JSON is taken as a string). Relative paths are resolved against the
current working directory, as with every other training launcher (run commands from the project
root). Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import build, read_json
from ..errors import InputError
from ..runtime import check_dtype_name

__all__ = [
    "ModelConfig",
    "DataConfig",
    "DropoutConfig",
    "OptimConfig",
    "EMAConfig",
    "CheckpointConfig",
    "ValidationConfig",
    "LoggingConfig",
    "BadDataConfig",
    "TrainConfig",
    "load_config",
    "parse_override",
    "apply_overrides",
    "flatten",
]


@dataclass
class ModelConfig:
    """Which frozen model to train against, and where the adapter starts from."""

    preset: str = "sdxl"  # tiny (random weights, tests) | toy (the toy world's base) | sdxl
    base: str | None = None  # SDXL pipeline folder or hub id; None = the preset's
    vae: str | None = None  # e.g. "madebyollin/sdxl-vae-fp16-fix"; None = the preset's
    image_encoder: str | None = None  # CLIP vision folder or hub id; None = the preset's
    image_encoder_subfolder: str | None = None
    init_adapter: str | None = None  # fine-tune: our adapter folder or a released `ms_adapter.bin`
    adapter: dict[str, Any] = field(default_factory=dict)  # MSAdapter.for_unet hyper-parameters
    weight_dtype: str = "auto"  # frozen weights: auto | fp32 | fp16 | bf16
    vae_dtype: str | None = None  # None = weight_dtype (use fp32 for the stock SDXL VAE under fp16)
    tiny_seed: int = 0  # seed of the tiny preset's random components
    # Attention regions: "box" (released: a cell attends to the subjects whose box covers it) or
    # "image" (every cell attends to every subject; the ablation "without masked attention" —
    # grounding tokens still embed the boxes).
    region: str = "box"

    def validate(self) -> None:
        _choice("model.preset", self.preset, ("tiny", "toy", "sdxl"))
        _choice("model.region", self.region, ("box", "image"))
        check_dtype_name(self.weight_dtype, "model.weight_dtype")
        check_dtype_name(self.vae_dtype, "model.vae_dtype", auto=False, none=True)


@dataclass
class DataConfig:
    """Where the samples come from and how they are shaped (DESIGN §2.4)."""

    manifest: str | None = None  # JSONL manifest, or a shard dataset folder (docs/training-data.md)
    cache_dir: str | None = None  # precomputed embeddings (`msdiffusion train cache`); None = live
    resolution: int | list[int] = 512  # square side, or [height, width]
    crop: str = "center"  # center | random (random needs live encoding, not the cache)
    reference_interpolation: str = "bilinear"  # bilinear (released training) | bicubic (inference)
    max_subjects: int | None = 4  # keep the first N subjects of a record (released: 4); None: all
    num_workers: int = 4  # DataLoader worker processes per training process
    check_files: bool = True  # JSONL: check every record and its files first (split over processes)
    shuffle_buffer: int = 500  # shards: samples each stream shuffles among (memory: × sample size)
    cache_shard_size: int = 256  # records per safetensors shard of the cache
    cache_dtype: str = "auto"  # cached embeddings: auto (= frozen weights') | fp32 | fp16 | bf16

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the training images."""
        if isinstance(self.resolution, int):
            return (self.resolution, self.resolution)
        return (int(self.resolution[0]), int(self.resolution[1]))

    def validate(self) -> None:
        res = self.resolution
        if isinstance(res, list) and len(res) != 2:
            raise InputError("data.resolution", "must be an integer or [height, width]", res)
        for side in res if isinstance(res, list) else [res]:
            if not isinstance(side, int) or side < 8 or side % 8:
                raise InputError("data.resolution", "sides must be multiples of 8 (>= 8)", res)
        _choice("data.crop", self.crop, ("center", "random"))
        _choice(
            "data.reference_interpolation", self.reference_interpolation, ("bilinear", "bicubic")
        )
        check_dtype_name(self.cache_dtype, "data.cache_dtype")
        if self.max_subjects is not None and self.max_subjects < 1:
            raise InputError("data.max_subjects", "must be >= 1 or null", self.max_subjects)
        _at_least("data.num_workers", self.num_workers, 0)
        _at_least("data.shuffle_buffer", self.shuffle_buffer, 1)
        _at_least("data.cache_shard_size", self.cache_shard_size, 1)
        if self.cache_dir is not None and self.crop != "center":
            raise InputError(
                "data.crop", "must be 'center' with a cache (latents are precomputed)", self.crop
            )


@dataclass
class DropoutConfig:
    """Condition dropouts (DESIGN §2.4): one uniform draw for image/text/both, one for grounding."""

    image: float = 0.05  # reference pixels → zeros (encoder and resampler still run)
    text: float = 0.05  # caption → ""
    both: float = 0.05  # both of the above
    grounding: float = 0.1  # learned queries instead of phrase + box (independent draw)

    def validate(self) -> None:
        for name in ("image", "text", "both", "grounding"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise InputError(f"dropout.{name}", "must be a probability in [0, 1]", value)
        if self.image + self.text + self.both > 1.0 + 1e-9:
            raise InputError(
                "dropout", "image + text + both must be <= 1", (self.image, self.text, self.both)
            )


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (released: 1e-4 constant, wd 0.01, clip 1.0)."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0  # None: no clipping
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0

    def validate(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(
                "optim.learning_rate", "must be a finite number > 0", self.learning_rate
            )
        _at_least("optim.weight_decay", self.weight_decay, 0)
        _at_least("optim.lr_warmup_steps", self.lr_warmup_steps, 0)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise InputError("optim.max_grad_norm", "must be > 0 or null", self.max_grad_norm)
        from diffusers.optimization import SchedulerType

        _choice("optim.lr_scheduler", self.lr_scheduler, tuple(s.value for s in SchedulerType))


@dataclass
class EMAConfig:
    """Exponential moving average of the adapter weights (exported instead of the raw ones)."""

    enabled: bool = False
    decay: float = 0.9999
    warmup: bool = True  # diffusers' EMA warm-up: decay grows as (1 + step) / (10 + step)

    def validate(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise InputError("ema.decay", "must be in (0, 1)", self.decay)


@dataclass
class CheckpointConfig:
    """Resumable checkpoints under ``<output_dir>/checkpoints/step-NNNNNNNN``."""

    every: int = 1000  # steps between checkpoints (0 = only the final one)
    keep: int = 3  # keep the last K complete checkpoints
    # SIGTERM/SIGUSR1: checkpoint at the next step boundary, then exit with this code (a
    # Kubernetes Job needs a non-zero one, e.g. 143, to be restarted instead of completed)
    signal_exit_code: int = 0

    def validate(self) -> None:
        _at_least("checkpoint.every", self.every, 0)
        _at_least("checkpoint.keep", self.keep, 1)
        if not (isinstance(self.signal_exit_code, int) and 0 <= self.signal_exit_code <= 255):
            raise InputError(
                "checkpoint.signal_exit_code",
                "must be an exit code in 0..255",
                self.signal_exit_code,
            )


@dataclass
class ValidationConfig:
    """Images generated on fixed layouts during training, saved as one grid per step.

    ``requests``: generation requests as `msdiffusion generate` reads them (prompt, subjects with
    images, boxes, phrases); relative image paths are resolved against ``base_dir`` (default: the
    current directory).
    """

    every: int = 0  # steps between validations (0 = off); the last step always validates if on
    requests: list[dict[str, Any]] = field(default_factory=list)
    base_dir: str | None = None
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    scale: float = 0.6
    seed: int = 0
    size: int | None = None  # output side; None = the training resolution

    def validate(self) -> None:
        _at_least("validation.every", self.every, 0)
        _at_least("validation.num_inference_steps", self.num_inference_steps, 1)
        if self.every and not self.requests:
            raise InputError(
                "validation.requests",
                "needs at least one request when validation.every > 0",
                self.requests,
            )


@dataclass
class LoggingConfig:
    report_to: str | None = "tensorboard"  # tensorboard | wandb | none
    every: int = 10  # steps between logged scalars
    project_name: str = "msdiffusion"

    def validate(self) -> None:
        _at_least("logging.every", self.every, 1)
        if self.report_to in ("none", ""):
            self.report_to = None


@dataclass
class BadDataConfig:
    """Skipping bad records: never die on one, never silently train on many."""

    max_skip_fraction: float = 0.01  # stop when the share of skipped records passes this
    min_samples: int = 200  # judge the runtime share only after this many samples were drawn
    log_first: int = 5  # log the reason of the first N skipped records

    def validate(self) -> None:
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise InputError(
                "bad_data.max_skip_fraction", "must be in [0, 1]", self.max_skip_fraction
            )
        _at_least("bad_data.min_samples", self.min_samples, 1)


@dataclass
class TrainConfig:
    """Everything `msdiffusion train` needs; see docs/training.md for each field."""

    output_dir: str = "outputs/train"
    seed: int = 0
    batch_size: int = 8  # per process and micro-step
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000  # optimizer steps
    mixed_precision: str = "auto"  # auto (= weight dtype on GPU, no on CPU) | no | fp16 | bf16
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    resume: str | None = None  # "latest" or a checkpoint folder
    allow_inexact_resume: bool = False  # resume even where it cannot continue bit-exactly
    cpu: bool = False  # force the CPU even when a GPU is visible
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    bad_data: BadDataConfig = field(default_factory=BadDataConfig)

    def validate(self) -> TrainConfig:
        """Check every field (raises InputError naming the first bad one); returns self."""
        _at_least("batch_size", self.batch_size, 1)
        _at_least("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        _at_least("max_steps", self.max_steps, 1)
        _choice("mixed_precision", self.mixed_precision, ("auto", "no", "fp16", "bf16"))
        for section in (
            self.model,
            self.data,
            self.dropout,
            self.optim,
            self.ema,
            self.checkpoint,
            self.validation,
            self.logging,
            self.bad_data,
        ):
            section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a (possibly partial) nested dict; unknown keys and wrong types are errors."""
        return build(cls, data)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted-key overrides applied (``{"optim.learning_rate": 2e-4}``)."""
        return TrainConfig.from_dict(apply_overrides(self.to_dict(), overrides))


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Read a JSON config (or start from the defaults), apply overrides, validate."""
    data: Any = {}
    if path is not None:
        data = read_json(path, "--config")
        if not isinstance(data, dict):
            raise InputError("--config", "must hold a JSON object", type(data).__name__)
    data = apply_overrides(data, overrides or {})
    return TrainConfig.from_dict(data).validate()


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.learning_rate=2e-4"`` → ``("optim.learning_rate", 2e-4)`` (JSON value, else str)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError("--set", "must look like key.path=value", text)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested copy of ``data`` with ``{"a.b": v}`` set at ``data["a"]["b"]``."""
    out = json.loads(json.dumps(data))
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(key, "is not a section", part)
            node = child
        node[leaf] = value
    return out


def flatten(data: dict[str, Any], prefix: str = "", keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """A nested config dict → ``{"section.key": value}``; the dicts named in ``keep`` (dotted)
    and empty ones stay whole values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = prefix + key
        if isinstance(value, dict) and value and name not in keep:
            out.update(flatten(value, f"{name}.", keep))
        else:
            out[name] = value
    return out


def _choice(key: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise InputError(key, f"must be one of {', '.join(options)}", value)


def _at_least(key: str, value: Any, minimum: float) -> None:
    if not (isinstance(value, (int, float)) and value >= minimum):
        raise InputError(key, f"must be >= {minimum}", value)
