"""``generate --request``: request files and sidecars, with the flags that change them.

- **Overrides.** Request flags given next to ``--request`` (``--seed``, ``--steps``, ``--height``,
  ``--scale``, ``--num-images``, …) replace those fields in every request read; the new sidecars
  record the requests as run and, under ``source``, the file and the flags that changed it.
- **The model of a sidecar.** A sidecar records the model settings its image was made with
  (``model.settings``); replaying it loads that model. A model flag that contradicts the sidecar
  is refused, naming both values, unless ``--allow-model-change`` says the difference is meant.
  A sidecar made on a GPU asks for ``--device cpu --allow-model-change`` on a machine without one.
- **Bit-exact replays.** A pipeline call's numbers depend on how many images it makes at once.
  A sidecar records its image's place in its call (``batch``); when the call made only that
  request's images, the replay makes the same call again and keeps that image, so it is
  bit-exact. An image made together with other prompts (``--batch-size``) replays within a few
  levels; a note says how to remake it exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from ..configs import read_json
from ..errors import InputError
from .model import (
    PATH_SETTINGS,
    PIXEL_SETTINGS,
    SHORT_DTYPES,
    ModelSettings,
    absolute_path,
    settings_from_sidecar,
)

__all__ = ["Source", "Plan", "read_sources", "plan_replay", "resolve_model"]


@dataclass
class Source:
    """A ``--request`` file: its requests, and the sidecar's records when it is one."""

    path: str
    requests: list[Any]
    model: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    batch: dict[str, Any] | None = None


@dataclass
class Plan:
    """What ``generate`` runs: the requests, the model, notes for the user, and per request the
    sidecar's ``source`` entry and the image of its call to keep (an exact replay)."""

    requests: list[Any]
    model: ModelSettings
    notes: list[str] = field(default_factory=list)
    sources: list[dict[str, Any] | None] = field(default_factory=list)
    keep: list[int | None] = field(default_factory=list)
    threads: int | None = None  # CPU threads the replayed images were made with
    base_sha256: str | None = None  # the checkpoint file the replayed sidecars were made with
    allow_model_change: bool = False


def read_sources(paths: list[str]) -> list[Source]:
    """Every ``--request`` file, read and validated (no model needed)."""
    from ..request import read_requests

    sources = []
    for path in paths:
        requests = read_requests(path, "--request")
        data = read_json(path, "--request")
        sidecar = isinstance(data, dict) and isinstance(data.get("request"), dict)
        sources.append(
            Source(
                path=path,
                requests=requests,
                model=data.get("model")
                if sidecar and isinstance(data.get("model"), dict)
                else None,
                versions=data.get("versions") if sidecar else None,
                batch=data.get("batch") if sidecar else None,
            )
        )
    return sources


def _normal(key: str, value: Any) -> Any:
    """A model setting in the form sidecars record it (absolute paths, short dtypes)."""
    if key == "dtype":
        return SHORT_DTYPES.get(value, value)
    if key == "device":
        return str(value).split(":")[0]
    if key == "lora":
        return tuple(absolute_path(p) for p in value or ())
    if key == "lora_scale":
        return float(value)
    if key in PATH_SETTINGS:
        return absolute_path(value)
    return value


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resolve_model(
    given: dict[str, Any], sources: list[Source], allow_change: bool
) -> tuple[ModelSettings, list[str]]:
    """The model settings: the flags given, the rest from the sidecars (which must agree)."""
    notes: list[str] = []
    recorded: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source in sources:
        if source.model is None:
            continue
        for key, value in settings_from_sidecar(source.model).items():
            value = _normal(key, value)
            if key in recorded and recorded[key] != value and key in PIXEL_SETTINGS:
                raise InputError(
                    "--request",
                    f"{origin[key]} and {source.path} were made with different models "
                    f"({key} {recorded[key]!r} and {value!r}); replay them one at a time",
                    [origin[key], source.path],
                    show_value=False,
                )
            recorded.setdefault(key, value)
            origin.setdefault(key, source.path)
    explicit = {k: v for k, v in given.items() if not (k in ("device", "dtype") and v == "auto")}
    settings = dict(recorded)
    settings.pop("offload", None)  # where weights wait is this machine's choice, not the image's
    for key, value in explicit.items():
        if key in recorded and _normal(key, value) != recorded[key] and key in PIXEL_SETTINGS:
            if not allow_change:
                raise InputError(
                    _flag(key),
                    f"differs from the model {origin[key]} was made with ({recorded[key]!r}); "
                    "leave the flag out to replay that model, or add --allow-model-change to "
                    "make its recipe with this one (the image will differ)",
                    value,
                )
            notes.append(
                f"{_flag(key)} {value} instead of {recorded[key]!r} ({origin[key]}): "
                "not a replay, the image will differ"
            )
        settings[key] = value
    if recorded.get("device") == "cuda" and "device" not in explicit:
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                "--request",
                f"{origin['device']} was made on a CUDA GPU, which this machine has not got; "
                "add --device cpu --allow-model-change to make its recipe here (the image will "
                "differ)",
                origin["device"],
                show_value=False,
            )
    known = {f.name for f in fields(ModelSettings)}
    return ModelSettings(**{k: v for k, v in settings.items() if k in known}), notes


def _version_note(source: Source) -> str | None:
    from ..version import __version__

    if not source.versions:
        return None
    changed = []
    for package, then in source.versions.items():
        try:
            now = __version__ if package == "msdiffusion" else metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
        if str(then) != now:
            changed.append(f"{package} {then} → {now}")
    if not changed:
        return None
    return (
        f"{source.path} was made with other versions ({', '.join(changed)}): the replay may differ"
    )


def plan_replay(
    sources: list[Source],
    overrides: dict[str, Any],
    model_flags: dict[str, Any],
    allow_change: bool,
) -> Plan:
    """Requests with ``overrides`` (request field → value) applied; the model resolved; exact
    replays arranged."""
    model, notes = resolve_model(model_flags, sources, allow_change)
    threads = {s.model.get("threads") for s in sources if s.model and s.model.get("threads")}
    plan = Plan(requests=[], model=model, notes=notes, allow_model_change=allow_change)
    if len(threads) == 1:
        plan.threads = int(threads.pop())
    digests = {s.model.get("base_sha256") for s in sources if s.model}
    digests.discard(None)
    if len(digests) == 1:
        plan.base_sha256 = digests.pop()
    replaying = not overrides and not any(n.endswith("the image will differ") for n in notes)
    for source in sources:
        note = _version_note(source)
        if note:
            plan.notes.append(note)
        batch = source.batch or {}
        for request in source.requests:
            keep = None
            if overrides:
                request = replace(request, **overrides)
            elif replaying and batch.get("images", 1) > 1:
                index = int(batch.get("index", 0))
                if batch.get("prompts", 1) == 1 and request.seed >= index:
                    request = replace(
                        request, seed=request.seed - index, num_images=int(batch["images"])
                    )
                    keep = index
                else:
                    plan.notes.append(
                        f"{source.path} was made in one call with other prompts: alone it "
                        "replays within a few levels; the original request file with the same "
                        "--batch-size remakes it bit-exactly"
                    )
            plan.requests.append(request)
            plan.keep.append(keep)
            plan.sources.append(
                {
                    "request": os.path.abspath(source.path),
                    "overrides": dict(overrides),
                }
            )
    return plan


def relative_to_cwd(path: str | os.PathLike[str]) -> str:
    """A path as the user would type it here (relative when under the current folder)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
