"""``GenerationRequest``: one generation job as plain data — what the CLI's flags, a request JSON,
a sidecar and the web UI's form all become. Validated here, once, reporting every error at once,
each located at its field (``("subjects", 1, "box")``):

- ``GenerationRequest.validate`` (run on construction): every field's own rule;
- ``GenerationRequest.check``: what needs files but no model — every reference, mask and control
  image readable, masks of the output's aspect ratio, phrases in the prompt under auto layout;
  the commands run it before they load a model;
- ``GenerationRequest.prepare``: the request against a model — the output size the model can
  make, then ``check`` and the layout rules with its tokenizer (``layout.validate_layout``).

Paths in a request file are relative to the file's folder (``read_requests``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .checks import check_flag, check_integer, check_number
from .configs import read_json
from .encoding import load_image, open_image
from .errors import ErrorList, InputError
from .geometry import Box, validate_box
from .layout import (
    Subject,
    check_mask_aspect,
    find_phrase,
    mask_fits,
    mask_to_array,
    validate_layout,
    validate_scale,
)
from .pipelines.call_checks import MAX_GUIDANCE
from .pipelines.schedulers import scheduler_names

__all__ = ["SubjectSpec", "GenerationRequest", "read_requests"]

SUBJECT_FIELDS = ("images", "box", "phrase", "scale", "mask")
PICTURE_FIELDS = ("control_image", "init_image", "inpaint_mask")  # a request's own images
# the strength of a request with an init_image, by its kind (diffusers' img2img default, 0.3,
# keeps too much of the picture for new subjects to appear)
DEFAULT_STRENGTH = {"image-to-image": 0.8, "inpainting": 0.9999}


def _load_image(image: Any, argument: Any) -> Image.Image:
    return load_image(image, argument)


def _shown(value: Any) -> Any:
    """A value as an error message shows it (an image by its type)."""
    return value if isinstance(value, (str, os.PathLike)) else type(value).__name__


def _picture_size(image: Any) -> tuple[int, int]:
    """(height, width) of a picture; a path is read only as far as its header."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    try:
        with Image.open(image) as opened:
            return opened.height, opened.width
    except Exception as err:  # any decoder failure on these bytes
        raise InputError(
            "init_image", f"is not a readable image ({err.__class__.__name__})", os.fspath(image)
        ) from None


def _check_file(argument: Any, path: Any) -> None:
    """A path that is no file — missing, or a folder — is an ``InputError``."""
    if os.path.isdir(path):
        raise InputError(argument, "is a folder, not an image file", os.fspath(path))
    if not os.path.isfile(path):
        raise InputError(argument, "file does not exist", os.fspath(path))


@dataclass
class SubjectSpec:
    """A subject as data: reference image path(s) (or PIL images), box, phrase, scale, mask.

    Its errors are located relative to the subject (``("box",)``); a request puts them under
    ``("subjects", j)``.
    """

    images: list[Any]
    box: Box | None
    phrase: str
    scale: float | None = None
    mask: Any = None

    def validate(self) -> SubjectSpec:
        """Check (and normalise) every field; all errors at once."""
        errors = ErrorList()
        images = self.images if isinstance(self.images, (list, tuple)) else [self.images]
        if not images:
            errors.add(InputError(("images",), "needs at least one reference image", self.images))
        for k, image in enumerate(images):
            if not isinstance(image, (str, os.PathLike, Image.Image)):
                errors.add(
                    InputError(("images", k), "must be a path or an image", type(image).__name__)
                )
            elif isinstance(image, (str, os.PathLike)):
                with errors.check():
                    _check_file(("images", k), image)
        self.images = list(images)
        if self.box is not None:
            with errors.check():
                self.box = validate_box(self.box, ("box",))
        if not isinstance(self.phrase, str) or not self.phrase.strip():
            errors.add(InputError(("phrase",), "must be a non-empty string", self.phrase))
        if self.scale is not None:
            with errors.check():
                self.scale = validate_scale(self.scale, ("scale",))
        if isinstance(self.mask, (str, os.PathLike)):
            with errors.check():
                _check_file(("mask",), self.mask)
        errors.raise_if_any()
        return self

    def load(self) -> tuple[list[Image.Image], np.ndarray | None]:
        """The reference images (RGB) and the mask (bool, ``None`` without one), read from disk
        where they are paths; unreadable images and empty masks are errors, all at once."""
        errors = ErrorList()
        images = []
        for k, image in enumerate(self.images):
            with errors.check():
                images.append(_load_image(image, ("images", k)))
        mask = None
        if self.mask is not None:
            with errors.check():
                source = self.mask
                if isinstance(source, (str, os.PathLike)):
                    source = open_image(source, ("mask",))  # its own mode: alpha, 16 bits
                mask = mask_to_array(source, ("mask",))
        errors.raise_if_any()
        return images, mask

    def to_subject(self) -> Subject:
        """The pipeline's ``Subject`` (images and mask loaded)."""
        images, mask = self.load()
        return Subject(image=images, box=self.box, phrase=self.phrase, mask=mask, scale=self.scale)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    return check_integer(name, value, low=low, high=high)


def _check_float(
    name: str, value: Any, low: float, high: float | None = None, high_open: bool = False
) -> float:
    return check_number(name, value, low=low, high=high, high_open=high_open)


@dataclass
class GenerationRequest:
    """One prompt with its subjects and settings. ``height``/``width`` None = the model's size;
    image k of the request uses seed ``seed + k``.

    ``negative_prompt`` None (the default everywhere: API, CLI, web UI) is no negative prompt —
    the pipeline's own unconditional branch, as when it is called without one: zero embeddings
    where its ``force_zeros_for_empty_prompt`` is set (SDXL), the empty prompt encoded otherwise.
    A string, even ``""``, is encoded as text. ``prompt_2`` / ``negative_prompt_2`` go to SDXL's
    second text encoder (None: the same text as the first). ``scheduler`` None keeps the model's
    (see ``pipelines.schedulers``). ``control_image`` is the ControlNet's condition (a model
    with a ControlNet needs one).

    ``init_image`` (a picture to start from) makes the request image-to-image: the picture is
    noised by ``strength`` (in [0, 1]; default 0.8 — enough for new subjects to appear) and
    denoised with the prompt and subjects; the output has the picture's size (rounded down to a
    multiple of 8) unless ``height``/``width`` say otherwise. With ``inpaint_mask`` (white =
    repainted, of the output's aspect ratio) it is inpainting: only the white part is repainted
    (``strength`` default 0.9999, diffusers' own), and every subject's box or mask must lie inside
    it; ``inference.generate`` gives the picture's own pixels back outside it.
    """

    prompt: str
    subjects: list[SubjectSpec] = field(default_factory=list)
    negative_prompt: str | None = None
    prompt_2: str | None = None
    negative_prompt_2: str | None = None
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
    scheduler: str | None = None
    control_image: Any = None
    controlnet_conditioning_scale: float = 1.0
    init_image: Any = None
    strength: float | None = None
    inpaint_mask: Any = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> GenerationRequest:
        """Check (and normalise) every field; raises every error found at once."""
        errors = ErrorList()
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            errors.add(InputError("prompt", "must be a non-empty string", self.prompt))
        for name in ("negative_prompt", "prompt_2", "negative_prompt_2"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                errors.add(InputError(name, "must be a string (or null: none)", value))
        if self.scheduler is not None and self.scheduler not in scheduler_names():
            errors.add(
                InputError(
                    "scheduler",
                    f"must be one of {', '.join(scheduler_names())} (or null: the model's)",
                    self.scheduler,
                )
            )
        if self.control_image is not None:
            if not isinstance(self.control_image, (str, os.PathLike, Image.Image)):
                errors.add(
                    InputError(
                        "control_image",
                        "must be a path or an image",
                        type(self.control_image).__name__,
                    )
                )
            elif isinstance(self.control_image, (str, os.PathLike)):
                with errors.check():
                    _check_file("control_image", self.control_image)
        with errors.check():
            self.controlnet_conditioning_scale = _check_float(
                "controlnet_conditioning_scale", self.controlnet_conditioning_scale, 0.0
            )
        with errors.check():
            self._validate_source()
        for name in ("height", "width"):
            value = getattr(self, name)
            with errors.check():
                if value is not None and (_check_int(name, value, 8) % 8):
                    raise InputError(name, "must be a positive multiple of 8", value)
        with errors.check():
            _check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        with errors.check():
            self.guidance_scale = _check_float(
                "guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE
            )
        with errors.check():
            self.scale = validate_scale(self.scale, "scale")
        with errors.check():
            _check_int("seed", self.seed, 0, 2**63 - 1)
        with errors.check():
            _check_int("num_images", self.num_images, 1, 64)
        if self.mask_threshold is not None:
            with errors.check():
                self.mask_threshold = _check_float(
                    "mask_threshold", self.mask_threshold, 0.0, 1.0, high_open=True
                )
        with errors.check():
            _check_int("start_step", self.start_step, 0)
        with errors.check():
            check_flag("drop_grounding_tokens", self.drop_grounding_tokens)
        if not isinstance(self.subjects, list):
            errors.add(InputError("subjects", "must be a list", self.subjects))
            errors.raise_if_any()
        for j, subject in enumerate(self.subjects):
            if not isinstance(subject, SubjectSpec):
                errors.add(
                    InputError(("subjects", j), "must be a SubjectSpec", type(subject).__name__)
                )
                continue
            with errors.check("subjects", j):
                subject.validate()
            if subject.box is None and subject.mask is None and self.mask_threshold is None:
                errors.add(
                    InputError(
                        ("subjects", j, "box"),
                        "needs a box or a mask (or auto layout: mask_threshold)",
                        None,
                    )
                )
        errors.raise_if_any()
        return self

    @property
    def kind(self) -> str:
        """``text-to-image``, ``image-to-image`` (an ``init_image``) or ``inpainting`` (and an
        ``inpaint_mask``)."""
        if self.init_image is None:
            return "text-to-image"
        return "image-to-image" if self.inpaint_mask is None else "inpainting"

    def _validate_source(self) -> None:
        """``init_image``, ``strength`` and ``inpaint_mask``: their types, their range, what they
        need and what they cannot go with; the default strength of the request's kind."""
        errors = ErrorList()
        for name, value, kinds in (
            ("init_image", self.init_image, (str, os.PathLike, Image.Image)),
            ("inpaint_mask", self.inpaint_mask, (str, os.PathLike, Image.Image, np.ndarray)),
        ):
            if value is None:
                continue
            if not isinstance(value, kinds):
                errors.add(InputError(name, "must be a path or an image", type(value).__name__))
            elif isinstance(value, (str, os.PathLike)):
                with errors.check():
                    _check_file(name, value)
        if self.init_image is None:
            for name in ("strength", "inpaint_mask"):
                if getattr(self, name) is not None:
                    errors.add(
                        InputError(name, "needs init_image: the picture to start from", None)
                    )
        elif self.control_image is not None:
            errors.add(
                InputError(
                    "control_image",
                    "works with text-to-image only, not with init_image",
                    _shown(self.control_image),
                )
            )
        if self.strength is None and self.init_image is not None:
            self.strength = DEFAULT_STRENGTH[self.kind]
        if self.strength is not None:
            with errors.check():
                self.strength = _check_float("strength", self.strength, 0.0, 1.0)
        errors.raise_if_any()

    def size(self, default_size: int) -> tuple[int, int]:
        """(height, width) of the output: as given; else the ``init_image``'s size rounded down
        to a multiple of 8; else ``default_size``."""
        if self.init_image is not None and (self.height is None or self.width is None):
            height, width = _picture_size(self.init_image)
            return (self.height or height - height % 8, self.width or width - width % 8)
        return (self.height or default_size, self.width or default_size)

    def check(self, default_size: int, vae_scale_factor: int | None = None) -> list[Subject]:
        """What needs the files but no model: every reference, mask, control image, picture to
        start from and inpainting mask readable, masks of the output's aspect ratio
        (``height``/``width``, else the picture's, else ``default_size``), phrases in the prompt
        under auto layout (by their characters; ``prepare`` checks the tokens); with the model's
        ``vae_scale_factor`` known, subjects inside the inpainting mask. Returns the subjects as
        the pipeline takes them; every error at once."""
        errors = ErrorList()
        if self.init_image is not None:
            self.load_init_image()  # the output's size is the picture's: first of all readable
        height, width = self.size(default_size)
        if height < 8 or width < 8:
            raise InputError(
                "init_image", "must be at least 8 pixels on each side", (height, width)
            )
        subjects = []
        for j, spec in enumerate(self.subjects):
            with errors.check("subjects", j):
                subject = spec.to_subject()
                subjects.append(subject)
                if subject.mask is not None:
                    check_mask_aspect(subject.mask, (height, width), ("mask",))
                if (
                    self.mask_threshold is not None
                    and find_phrase(self.prompt, spec.phrase) is None
                ):
                    raise InputError(
                        ("phrase",),
                        f"must appear in the prompt {self.prompt!r} for auto layout",
                        spec.phrase,
                    )
        if self.control_image is not None:
            with errors.check():
                self.load_control_image()
        if self.inpaint_mask is not None:
            with errors.check():
                repaint = self.load_inpaint_mask()  # (h, w) bool
                picture = _picture_size(self.init_image)
                if not (
                    mask_fits(repaint.shape, picture) or mask_fits(repaint.shape, (height, width))
                ):
                    raise InputError(
                        "inpaint_mask",
                        "must have the aspect ratio of init_image (width x height "
                        f"{picture[1]}x{picture[0]}), up to rounding",
                        f"{repaint.shape[1]}x{repaint.shape[0]}",
                    )
                if vae_scale_factor is not None and len(subjects) == len(self.subjects):
                    self._check_inside_repaint(subjects, repaint, (height, width), vae_scale_factor)
        errors.raise_if_any()
        return subjects

    def _check_inside_repaint(
        self, subjects: list[Subject], repaint: np.ndarray, size: tuple[int, int], factor: int
    ) -> None:
        """Every subject's box or mask inside the repaint area (the pipeline's own rule)."""
        from .pipelines.repaint import regions_outside, repaint_cells

        mask = Image.fromarray(repaint.astype(np.uint8) * 255, mode="L")
        inside = repaint_cells(mask, size, factor)[0]  # (h, w)
        regions = [(("subjects", j), s.box, s.mask) for j, s in enumerate(subjects)]
        errors = ErrorList()
        for error in regions_outside(regions, inside, factor, mask_name="inpaint_mask"):
            errors.add(error)
        errors.raise_if_any()

    def load_init_image(self) -> Image.Image | None:
        """The picture to start from, as an RGB image (None without one)."""
        if self.init_image is None:
            return None
        return _load_image(self.init_image, "init_image")

    def load_inpaint_mask(self) -> np.ndarray | None:
        """The inpainting mask as bool (h, w), True = repainted (None without one)."""
        if self.inpaint_mask is None:
            return None
        source = self.inpaint_mask
        if isinstance(source, (str, os.PathLike)):
            source = open_image(source, "inpaint_mask")  # its own mode: alpha, 16 bits
        return mask_to_array(source, "inpaint_mask")

    def inpaint_mask_image(self) -> Image.Image | None:
        """The inpainting mask as the pipeline takes it: a black-and-white picture."""
        repaint = self.load_inpaint_mask()
        if repaint is None:
            return None
        return Image.fromarray(repaint.astype(np.uint8) * 255, mode="L")

    def load_control_image(self) -> Image.Image | None:
        """The ControlNet condition as an RGB image (None without one)."""
        if self.control_image is None:
            return None
        return _load_image(self.control_image, "control_image")

    def prepare(self, tokenizer: Any, default_size: int, size_multiple: int = 8) -> list[Subject]:
        """The request against a model: an output size that is a multiple of the model's
        ``size_multiple`` (its VAE's), :meth:`check`, and the layout rules (masks of the
        output's aspect ratio, phrases in the prompt under auto layout) with the model's
        ``tokenizer``. Returns the subjects as the pipeline takes them; every error at once."""
        errors = ErrorList()
        height, width = self.size(default_size)
        for name, value in (("height", height), ("width", width)):
            if value % size_multiple:
                errors.add(InputError(name, f"must be a multiple of {size_multiple}", value))
        subjects = []
        with errors.check():
            subjects = self.check(default_size, size_multiple)
        if not errors:
            with errors.check():
                validate_layout(
                    [subjects],
                    [self.prompt],
                    tokenizer,
                    (height, width),
                    self.scale,
                    self.mask_threshold,
                )
        errors.raise_if_any()
        return subjects

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
        for name in PICTURE_FIELDS:
            if getattr(self, name) is not None:
                data[name] = _path_out(getattr(self, name), base_dir)
        return data

    @classmethod
    def from_dict(
        cls, data: Any, base_dir: str | os.PathLike[str] | None = None
    ) -> GenerationRequest:
        """Build and validate from a dict (a request JSON entry); paths relative to base_dir."""
        if not isinstance(data, dict):
            raise InputError("request", "must be a JSON object", type(data).__name__)
        errors = ErrorList()
        known = {f.name for f in fields(cls)}
        for key in sorted(set(data) - known):
            errors.add(
                InputError(("request", key), f"is not a request field ({sorted(known)})", data[key])
            )
        if "prompt" not in data:
            errors.add(InputError(("request", "prompt"), "is required", None))
        values = {k: v for k, v in data.items() if k in known}
        raw_subjects = values.pop("subjects", []) or []
        if not isinstance(raw_subjects, list):
            errors.add(InputError("subjects", "must be a list", raw_subjects))
            raw_subjects = []
        subjects = []
        for j, raw in enumerate(raw_subjects):
            with errors.check("subjects", j):
                subjects.append(_subject_from_dict(raw, base_dir))
        for name in PICTURE_FIELDS:
            if values.get(name) is not None:
                values[name] = _path_in(values[name], base_dir)
        errors.raise_if_any()
        return cls(subjects=subjects, **values)


def _subject_from_dict(raw: Any, base_dir: str | os.PathLike[str] | None) -> SubjectSpec:
    """A subject entry of a request JSON (errors relative to the subject)."""
    if not isinstance(raw, dict):
        raise InputError((), "must be an object", raw)
    extra = sorted(set(raw) - {*SUBJECT_FIELDS, "image"})
    if extra:
        raise InputError(
            (extra[0],), f"is not a subject field ({', '.join(SUBJECT_FIELDS)})", raw[extra[0]]
        )
    images = raw.get("images", raw.get("image"))
    if images is None:
        raise InputError(("images",), "is required", None)
    images = images if isinstance(images, list) else [images]
    return SubjectSpec(
        images=[_path_in(p, base_dir) for p in images],
        box=raw.get("box"),
        phrase=raw.get("phrase", ""),
        scale=raw.get("scale"),
        mask=_path_in(raw["mask"], base_dir) if raw.get("mask") else None,
    )


def _path_in(value: Any, base_dir: str | os.PathLike[str] | None) -> Any:
    if isinstance(value, str) and base_dir is not None and not os.path.isabs(value):
        return str(Path(base_dir) / value)
    return value


def _path_out(value: Any, base_dir: str | os.PathLike[str] | None) -> Any:
    if isinstance(value, Image.Image):
        raise InputError(
            ("subjects", "images"),
            "in-memory images must be saved before writing JSON",
            "PIL.Image",
        )
    path = Path(value).resolve()
    if base_dir is not None:
        try:
            return str(path.relative_to(Path(base_dir).resolve()))
        except ValueError:
            pass
    return str(path)


def read_requests(
    path: str | os.PathLike[str], argument: str = "request"
) -> list[GenerationRequest]:
    """Requests from a JSON file: one request, a list, ``{"requests": [...]}``, or a sidecar.
    Relative paths in it are relative to the file's folder. ``argument``: how errors about the
    file itself name it (``--request`` on the command line)."""
    data = read_json(path, argument)
    if isinstance(data, dict) and "requests" in data:
        data = data["requests"]
    elif isinstance(data, dict) and isinstance(data.get("request"), dict):  # a sidecar
        data = data["request"]
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise InputError(argument, "holds no requests", str(path))
    return [GenerationRequest.from_dict(entry, base_dir=Path(path).parent) for entry in entries]
