"""``GenerationRequest``: one generation job as plain data — what the CLI's flags, a request JSON,
a sidecar and the web UI's form all become. Validated once, here, with errors that name the field.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import InputError
from .layout import validate_box, validate_scale

__all__ = ["SubjectSpec", "GenerationRequest", "read_requests"]


@dataclass
class SubjectSpec:
    """A subject as data: reference image path(s) (or PIL images), box, phrase, scale, mask."""

    images: list[Any]
    box: tuple[float, float, float, float] | None
    phrase: str
    scale: float | None = None
    mask: Any = None

    def validate(self, where: str) -> SubjectSpec:
        images = self.images if isinstance(self.images, (list, tuple)) else [self.images]
        if not images:
            raise InputError(f"{where}.images", "needs at least one reference image", self.images)
        for k, image in enumerate(images):
            if not isinstance(image, (str, os.PathLike, Image.Image)):
                raise InputError(
                    f"{where}.images[{k}]", "must be a path or an image", type(image).__name__
                )
            if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
                raise InputError(f"{where}.images[{k}]", "file does not exist", os.fspath(image))
        self.images = list(images)
        if self.box is not None:
            self.box = validate_box(self.box, f"{where}.box")
        if not isinstance(self.phrase, str) or not self.phrase.strip():
            raise InputError(f"{where}.phrase", "must be a non-empty string", self.phrase)
        if self.scale is not None:
            self.scale = validate_scale(self.scale, f"{where}.scale")
        if isinstance(self.mask, (str, os.PathLike)) and not os.path.isfile(self.mask):
            raise InputError(f"{where}.mask", "file does not exist", os.fspath(self.mask))
        return self


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        rule = f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise InputError(name, rule, value)
    return value


def _check_float(
    name: str, value: Any, low: float, high: float | None = None, high_open: bool = False
) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(name, "must be a number", value) from None
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or number < low or too_high:
        bound = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise InputError(name, f"must be a number >= {low}{bound}", value)
    return number


@dataclass
class GenerationRequest:
    """One prompt with its subjects and settings. ``height``/``width`` None = the model's size;
    image k of the request uses seed ``seed + k``."""

    prompt: str
    subjects: list[SubjectSpec] = field(default_factory=list)
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    scale: float = 0.6
    seed: int = 0
    num_images: int = 1
    mask_threshold: float | None = None
    start_step: int = 5
    drop_grounding_tokens: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> GenerationRequest:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt", "must be a non-empty string", self.prompt)
        if not isinstance(self.negative_prompt, str):
            raise InputError("negative_prompt", "must be a string", self.negative_prompt)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (_check_int(name, value, 8) % 8):
                raise InputError(name, "must be a positive multiple of 8", value)
        _check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        self.guidance_scale = _check_float("guidance_scale", self.guidance_scale, 0.0)
        self.scale = _check_float("scale", self.scale, 0.0)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("num_images", self.num_images, 1, 64)
        if self.mask_threshold is not None:
            self.mask_threshold = _check_float(
                "mask_threshold", self.mask_threshold, 0.0, 1.0, high_open=True
            )
        _check_int("start_step", self.start_step, 0)
        if not isinstance(self.drop_grounding_tokens, bool):
            raise InputError(
                "drop_grounding_tokens", "must be true or false", self.drop_grounding_tokens
            )
        if not isinstance(self.subjects, list):
            raise InputError("subjects", "must be a list", self.subjects)
        for j, subject in enumerate(self.subjects):
            if not isinstance(subject, SubjectSpec):
                raise InputError(f"subjects[{j}]", "must be a SubjectSpec", type(subject).__name__)
            subject.validate(f"subjects[{j}]")
            if subject.box is None and subject.mask is None and self.mask_threshold is None:
                raise InputError(
                    f"subjects[{j}].box",
                    "needs a box or a mask (or auto layout: mask_threshold)",
                    None,
                )
        return self

    # -- plain data -----------------------------------------------------------------------------
    def to_dict(self, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """JSON-ready dict; paths relative to ``base_dir`` when under it. PIL images can't be
        written: save them first (``write_result`` does)."""
        data = asdict(self)
        data["subjects"] = []
        for subject in self.subjects:
            entry = {
                "images": [_path_out(p, base_dir) for p in subject.images],
                "box": list(subject.box) if subject.box is not None else None,
                "phrase": subject.phrase,
                "scale": subject.scale,
                "mask": _path_out(subject.mask, base_dir) if subject.mask is not None else None,
            }
            data["subjects"].append(entry)
        return data

    @classmethod
    def from_dict(
        cls, data: Any, base_dir: str | os.PathLike[str] | None = None
    ) -> GenerationRequest:
        """Build and validate from a dict (a request JSON entry); paths relative to base_dir."""
        if not isinstance(data, dict):
            raise InputError("request", "must be a JSON object", type(data).__name__)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"request.{unknown[0]}",
                f"is not a request field ({sorted(known)})",
                data[unknown[0]],
            )
        if "prompt" not in data:
            raise InputError("request.prompt", "is required", None)
        values = dict(data)
        raw_subjects = values.pop("subjects", []) or []
        if not isinstance(raw_subjects, list):
            raise InputError("subjects", "must be a list", raw_subjects)
        subjects = []
        for j, raw in enumerate(raw_subjects):
            if not isinstance(raw, dict):
                raise InputError(f"subjects[{j}]", "must be an object", raw)
            extra = sorted(set(raw) - {"images", "image", "box", "phrase", "scale", "mask"})
            if extra:
                raise InputError(
                    f"subjects[{j}].{extra[0]}",
                    "is not a subject field (images, box, phrase, scale, mask)",
                    raw[extra[0]],
                )
            images = raw.get("images", raw.get("image"))
            if images is None:
                raise InputError(f"subjects[{j}].images", "is required", None)
            images = images if isinstance(images, list) else [images]
            subjects.append(
                SubjectSpec(
                    images=[_path_in(p, base_dir) for p in images],
                    box=raw.get("box"),
                    phrase=raw.get("phrase", ""),
                    scale=raw.get("scale"),
                    mask=_path_in(raw["mask"], base_dir) if raw.get("mask") else None,
                )
            )
        return cls(subjects=subjects, **values)


def _path_in(value: Any, base_dir: str | os.PathLike[str] | None) -> Any:
    if isinstance(value, str) and base_dir is not None and not os.path.isabs(value):
        return str(Path(base_dir) / value)
    return value


def _path_out(value: Any, base_dir: str | os.PathLike[str] | None) -> Any:
    if isinstance(value, Image.Image):
        raise InputError(
            "subjects.images", "in-memory images must be saved before writing JSON", "PIL.Image"
        )
    path = Path(value).resolve()
    if base_dir is not None:
        try:
            return str(path.relative_to(Path(base_dir).resolve()))
        except ValueError:
            pass
    return str(path)


def read_requests(path: str | os.PathLike[str]) -> list[GenerationRequest]:
    """Requests from a JSON file: one request, a list, ``{"requests": [...]}``, or a sidecar."""
    path = Path(path)
    if not path.is_file():
        raise InputError("request", "file does not exist", str(path))
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError("request", f"is not valid JSON ({err})", str(path)) from None
    if isinstance(data, dict) and "requests" in data:
        data = data["requests"]
    elif isinstance(data, dict) and isinstance(data.get("request"), dict):  # a sidecar
        data = data["request"]
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise InputError("request", "holds no requests", str(path))
    return [GenerationRequest.from_dict(entry, base_dir=path.parent) for entry in entries]
