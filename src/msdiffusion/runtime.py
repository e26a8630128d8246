"""Where models run and how they load: one vocabulary of dtypes and devices for every command and
config, and one way to explain a model that cannot be loaded.

dtypes are named ``fp32``, ``fp16``, ``bf16`` (the long names ``float32``, ``float16``,
``bfloat16`` mean the same), or ``auto``: fp32 on the CPU, fp16 on a GPU — or bf16 where the
caller prefers it and the GPU has it (training). Devices: ``auto`` (the GPU when there is one),
``cpu``, ``cuda``, ``cuda:N``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .errors import InputError, Location, ModelNotAvailableError
from .hub import is_local

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "check_dtype_name",
    "to_dtype",
    "dtype_label",
    "resolve_dtype",
    "resolve_device",
    "load_or_explain",
]

T = TypeVar("T")

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
DTYPE_NAMES: tuple[str, ...] = (*DTYPES, *_ALIASES)  # every name a dtype setting accepts


def check_dtype_name(
    value: Any, argument: str | Location = "dtype", *, auto: bool = True, none: bool = False
) -> None:
    """Raise ``InputError`` unless ``value`` names a dtype (or ``auto`` / None where allowed)."""
    if (value is None and none) or (value == "auto" and auto) or value in DTYPE_NAMES:
        return
    options = (("auto",) if auto else ()) + DTYPE_NAMES
    raise InputError(argument, f"must be one of {', '.join(options)}", value)


def to_dtype(name: str) -> torch.dtype:
    """A dtype name (not ``auto``) → the torch dtype."""
    return DTYPES[_ALIASES.get(name, name)]


def dtype_label(dtype: torch.dtype) -> str:
    """``torch.float16`` → ``"float16"`` (for sidecars, reports and fingerprints)."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(
    dtype: str | torch.dtype | None,
    device: torch.device,
    *,
    argument: str | Location = "dtype",
    prefer_bf16: bool = False,
) -> torch.dtype:
    """A dtype setting → the dtype to run in on ``device`` (None = ``auto``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if prefer_bf16 and torch.cuda.is_bf16_supported() else torch.float16
    check_dtype_name(dtype, argument)
    return to_dtype(dtype)


def resolve_device(device: str | torch.device | None, argument: str = "device") -> torch.device:
    """A device setting → the device (``auto``/None: the GPU when there is one)."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(argument, "must be auto, cpu, cuda or cuda:N", device) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(argument, "CUDA is not available on this machine", device)
    return resolved


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a failed hub or folder load raises — not our bugs: those keep their traceback."""
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, ValueError, HfHubHTTPError)


def load_or_explain(load: Callable[[], T], *, what: str, source: str | None, fix: str) -> T:
    """``load()``, or a ``ModelNotAvailableError`` that says what could not be loaded from where,
    why, and ``fix``: what to do. Why: a local folder that is not there; one that is there but
    does not load (the loader's own first line); a hub id offline and not in the local cache; or
    the hub's own answer."""
    try:
        return load()
    except _hub_errors() as err:
        from huggingface_hub import constants

        first = str(err).splitlines()[0][:160] if str(err) else ""
        local = source is not None and is_local(source)
        if local and not os.path.exists(source):
            why = "no such file or folder"
        elif local:
            why = f"it is there but does not load — {err.__class__.__name__}: {first}"
        elif constants.HF_HUB_OFFLINE:
            why = "offline (HF_HUB_OFFLINE=1) and not in the local cache"
        else:
            why = f"{err.__class__.__name__}: {first}"
        raise ModelNotAvailableError(
            f"cannot load the {what} from {source!r} ({why}); {fix}"
        ) from None
