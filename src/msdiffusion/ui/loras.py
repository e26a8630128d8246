"""LoRA on the page: the LoRAs the page was started with (``--lora``, repeatable), one at a time.

The model loads every LoRA once (``msdiffusion.commands.model.load_model``); the form picks one (or
none) and its scale for each generation, and that generation's sidecars record only the LoRA in
use, so a sidecar replays on the command line with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .handlers import Form, FormErrors, to_number
from .messages import plain

__all__ = ["lora_choice", "lora_errors", "info_with_lora", "lora_from_sidecar", "lora_labels"]


def lora_labels(loras: Sequence[str]) -> list[tuple[str, str]]:
    """The LoRA menu: ``(label, value)`` pairs, "none" first; a label is the file's name (its
    folder's too where two names are the same)."""
    from pathlib import Path

    names = [Path(p).name for p in loras]
    labels = [
        str(Path(p).parent.name + "/" + n) if names.count(n) > 1 else n
        for p, n in zip(loras, names, strict=True)
    ]
    return [("none", "")] + list(zip(labels, loras, strict=True))


def lora_choice(form: Form, loras: Sequence[str]) -> tuple[int | None, float]:
    """The LoRA the form picks — its index in ``loras`` (None: none) — and its scale; raises
    :class:`FormErrors` for a LoRA the page does not have or a scale below 0."""
    errors: dict[str, str] = {}
    index = None
    if form.lora:
        if form.lora in loras:
            index = list(loras).index(form.lora)
        else:
            errors["lora"] = "Choose one of the LoRAs the page was started with (or none)."
    scale = to_number(errors, "lora_scale", form.lora_scale, integer=False)
    if scale is not None and not (math.isfinite(scale) and scale >= 0):
        errors["lora_scale"] = plain("lora_scale", "must be a number >= 0", scale)
    if errors:
        raise FormErrors(errors)
    return index, float(scale)


def lora_errors(form: Form, loras: Sequence[str]) -> dict[str, str]:
    """``{field: message}`` for the form's LoRA fields (empty when they are fine)."""
    try:
        lora_choice(form, loras)
    except FormErrors as err:
        return err.errors
    return {}


def info_with_lora(
    info: dict[str, Any], loras: Sequence[str], index: int | None, scale: float
) -> dict[str, Any]:
    """The model description for one generation's sidecars: the model settings record only the
    LoRA in use, so ``msdiffusion generate --request SIDECAR`` replays with it."""
    settings = info.get("settings")
    if not isinstance(settings, dict):
        return info
    used = [] if index is None else [loras[index]]
    return {**info, "settings": {**settings, "lora": used, "lora_scale": scale}}


def lora_from_sidecar(data: Any, loras: Sequence[str]) -> tuple[str, float] | None:
    """The page's LoRA choice recorded in a loaded sidecar's model settings (``("", 1.0)``: none
    was used); None when the file records no choice or one this page does not have."""
    model = data.get("model") if isinstance(data, dict) else None
    settings = model.get("settings") if isinstance(model, dict) else None
    if not isinstance(settings, dict) or "lora" not in settings:
        return None
    used = list(settings.get("lora") or [])
    scale = float(settings.get("lora_scale", 1.0))
    if not used:
        return "", scale
    if len(used) == 1 and used[0] in loras:
        return used[0], scale
    return None
