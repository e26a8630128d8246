"""What the web UI does, as plain functions of the form's values (no Gradio here).

The page is a :class:`Form`: the request's fields as the widgets hold them (text boxes, numbers, the
uploaded files' paths). :func:`build_request` turns a form into a
:class:`msdiffusion.request.GenerationRequest` — the same validation as the CLI, with every
:class:`~msdiffusion.errors.InputError` mapped to the widget it is about by its location
(:class:`FormErrors`);
:func:`form_from_request` goes back, so a request JSON or a result's sidecar restores the page.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path
from ..errors import ErrorList, InputError, Location, MSDiffusionError
from .messages import is_incomplete, plain

if TYPE_CHECKING:
    from ..request import GenerationRequest

MAX_SUBJECTS = 8  # subject slots on the page; the first SHOWN_SUBJECTS are open at the start
SHOWN_SUBJECTS = 2
MAX_SEED = 2**31 - 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

__all__ = [
    "MAX_SUBJECTS",
    "SHOWN_SUBJECTS",
    "SubjectForm",
    "Form",
    "FormErrors",
    "FORM_FIELDS",
    "build_request",
    "validate_form",
    "form_from_request",
    "form_from_values",
    "form_to_values",
    "format_box",
    "canvas_for",
    "copy_files",
    "find_own_sidecar",
    "field_label",
    "pick_seed",
    "shown_slots",
    "shift_out",
    "clear_slot",
    "only_wrong",
    "to_number",
]


@dataclass
class SubjectForm:
    """One subject slot: reference image paths, phrase, box text ``"x0, y0, x1, y1"``, scale,
    mask."""

    images: list[str] = field(default_factory=list)
    phrase: str = ""
    box: str = ""
    scale: float | str | None = None  # text as typed; None or "" = the request's scale
    mask: str | None = None

    def is_empty(self) -> bool:
        return not (self.images or self.phrase.strip() or self.box.strip() or self.mask)


@dataclass
class Form:
    """Every field of the page, as the widgets hold them."""

    prompt: str = ""
    negative_prompt: str = ""
    subjects: list[SubjectForm] = field(
        default_factory=lambda: [SubjectForm() for _ in range(MAX_SUBJECTS)]
    )
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance: float = 7.5
    scale: float = 0.6
    seed: int = 0
    random_seed: bool = True  # a new image each time; the seed used is shown and can be kept
    num_images: int = 1
    auto_layout: bool = False
    mask_threshold: float = 0.5
    start_step: int = 5
    drop_grounding: bool = False
    scheduler: str = ""  # "": the model's own
    init_image: str | None = None  # a picture to start from (see .picture)
    repaint: str = "whole"  # with a picture: "whole", "boxes" or "mask"
    strength: float = 0.8
    inpaint_mask: str | None = None
    lora: str = ""  # "": none; else the name of one of the LoRAs the page was started with
    lora_scale: float = 1.0


# Field keys, in the order the app passes its widgets: the top-level fields, then per subject slot
# ``s{k}.images``, ``s{k}.phrase``, ``s{k}.box``, ``s{k}.scale``, ``s{k}.mask``.
_TOP_FIELDS = tuple(f.name for f in fields(Form) if f.name != "subjects")
_SUBJECT_FIELDS = tuple(f.name for f in fields(SubjectForm))
FORM_FIELDS: tuple[str, ...] = _TOP_FIELDS + tuple(
    f"s{k}.{name}" for k in range(MAX_SUBJECTS) for name in _SUBJECT_FIELDS
)

_LABELS = {
    "prompt": "prompt",
    "negative_prompt": "negative prompt",
    "width": "width",
    "height": "height",
    "steps": "steps",
    "guidance": "guidance",
    "scale": "scale",
    "seed": "seed",
    "num_images": "number of images",
    "mask_threshold": "mask threshold",
    "start_step": "start step",
    "init_image": "picture",
    "inpaint_mask": "repaint mask",
    "strength": "strength",
}


def field_label(key: str) -> str:
    """A field key as the page names it: ``"s1.box"`` → ``"subject 2 box"``."""
    match = re.fullmatch(r"s(\d+)\.(\w+)", key)
    if match:
        return f"subject {int(match.group(1)) + 1} {match.group(2)}"
    return _LABELS.get(key, key)


class FormErrors(MSDiffusionError):
    """Validation messages keyed by form field (``"prompt"``, ``"s0.box"``, …)."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field_label(k)}: {m}" for k, m in self.errors.items()))


# ----------------------------------------------------------------------------------------------
# Widgets ↔ Form


def _gallery_paths(value: Any) -> list[str]:
    """A gallery's value (paths, or ``(path, caption)`` pairs) → the paths."""
    if not value:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [str(item[0] if isinstance(item, (list, tuple)) else item) for item in items if item]


def _blank_to_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value  # validated with the request (a non-number is reported next to its field)


def form_from_values(values: Sequence[Any]) -> Form:
    """The widgets' values, in :data:`FORM_FIELDS` order → a :class:`Form`."""
    if len(values) != len(FORM_FIELDS):
        raise ValueError(f"expected {len(FORM_FIELDS)} values, got {len(values)}")
    by_key = dict(zip(FORM_FIELDS, values, strict=True))
    subjects = [
        SubjectForm(
            images=_gallery_paths(by_key[f"s{k}.images"]),
            phrase=str(by_key[f"s{k}.phrase"] or ""),
            box=str(by_key[f"s{k}.box"] or ""),
            scale=_blank_to_none(by_key[f"s{k}.scale"]),
            mask=by_key[f"s{k}.mask"] or None,
        )
        for k in range(MAX_SUBJECTS)
    ]
    top = {name: by_key[name] for name in _TOP_FIELDS}
    for name in ("prompt", "negative_prompt", "scheduler", "lora"):
        top[name] = str(top[name] or "")
    for name in ("init_image", "inpaint_mask"):
        top[name] = top[name] or None
    top["repaint"] = str(top["repaint"] or "whole")
    for name in ("random_seed", "auto_layout", "drop_grounding"):
        top[name] = bool(top[name])
    return Form(subjects=subjects, **top)


def form_to_values(form: Form) -> list[Any]:
    """A :class:`Form` → the widgets' values, in :data:`FORM_FIELDS` order."""
    values = []
    for key in FORM_FIELDS:
        match = re.fullmatch(r"s(\d+)\.(\w+)", key)
        if match:
            subject = form.subjects[int(match.group(1))]
            value = getattr(subject, match.group(2))
            if match.group(2) == "images":
                value = list(value)
            elif match.group(2) == "scale":  # a text field: empty = the request's scale
                value = "" if value is None else f"{float(value):g}"
            values.append(value)
        else:
            values.append(getattr(form, key))
    return values


# ----------------------------------------------------------------------------------------------
# Form → request (validation)


def format_box(box: Sequence[float] | None) -> str:
    """A box as the page's box field shows it: ``"0.05, 0.3, 0.5, 0.9"`` (4 decimals)."""
    if box is None:
        return ""
    return ", ".join(f"{float(v):.4f}".rstrip("0").rstrip(".") if float(v) else "0" for v in box)


# Request arguments (as GenerationRequest names them) → form fields.
_REQUEST_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "scale": "scale",
    "seed": "seed",
    "num_images": "num_images",
    "mask_threshold": "mask_threshold",
    "start_step": "start_step",
    "drop_grounding_tokens": "drop_grounding",
    "scheduler": "scheduler",
    "init_image": "init_image",
    "strength": "strength",
    "inpaint_mask": "inpaint_mask",
}
_SUBJECT_KEYS = {
    "images": "images",
    "image": "images",
    "phrase": "phrase",
    "box": "box",
    "mask": "mask",
    "scale": "scale",
}


def _field_of(location: Location, slots: Sequence[int]) -> str:
    """The form field an ``InputError`` is about, from its location: ``("subjects", 1, "box")`` →
    ``"s3.box"`` when request subject 1 is slot 3 (a request's own location may come first:
    ``("requests", 0, ...)``); a subject-level error without attribute goes to its images."""
    if location[:1] == ("requests",):
        location = location[2:]
    if location[:1] == ("subjects",) and len(location) > 1 and isinstance(location[1], int):
        if location[1] < len(slots):
            attribute = next((p for p in location[2:] if isinstance(p, str)), "images")
            return f"s{slots[location[1]]}.{_SUBJECT_KEYS.get(attribute, 'images')}"
    if location[:1] == ("subject",) and len(slots) == 1:  # a Subject's own check
        attribute = location[1] if len(location) > 1 else "images"
        return f"s{slots[0]}.{_SUBJECT_KEYS.get(str(attribute), 'images')}"
    if location and location[-1] in _REQUEST_FIELDS:
        return _REQUEST_FIELDS[location[-1]]
    return "prompt"  # no better place: shown under the prompt


def to_number(errors: dict[str, str], key: str, value: Any, *, integer: bool) -> Any:
    """A widget's number as the request wants it (whole floats → int); None + an error if not."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        errors[key] = plain(key, "must be a number", value)
        return None
    if integer and math.isfinite(number) and number == int(number):
        return int(number)
    return number  # the request's own rule reports non-integers and out-of-range values


def _subject_slots(form: Form) -> list[int]:
    return [k for k, s in enumerate(form.subjects) if not s.is_empty()]


def build_request(
    form: Form, *, seed: int | None = None, tokenizer: Any = None
) -> GenerationRequest:
    """The form as a :class:`~msdiffusion.request.GenerationRequest` (``seed``: instead of the
    form's).

    Raises :class:`FormErrors` with every problem found, each keyed by its field: the page's own
    checks (a used subject slot needs an image; numbers are numbers), then the request's
    validation (the same rules as the CLI and request JSONs: every field, files readable as
    images, masks not empty), then — given the model's ``tokenizer`` — its check against the
    model (``GenerationRequest.prepare``: masks of the output's aspect ratio, phrases in the
    prompt under auto layout), which ``generate`` would otherwise report later.
    """
    from ..request import GenerationRequest, SubjectSpec

    errors: dict[str, str] = {}
    kwargs: dict[str, Any] = {
        "prompt": form.prompt,
        # an empty field: no negative prompt (the pipeline's own unconditional), as everywhere
        "negative_prompt": form.negative_prompt if form.negative_prompt.strip() else None,
        "drop_grounding_tokens": form.drop_grounding,
        "scheduler": form.scheduler or None,
    }
    for key, name, integer in (
        ("width", "width", True),
        ("height", "height", True),
        ("steps", "num_inference_steps", True),
        ("guidance", "guidance_scale", False),
        ("scale", "scale", False),
        ("seed", "seed", True),
        ("num_images", "num_images", True),
        ("mask_threshold", "mask_threshold", False),
        ("start_step", "start_step", True),
    ):
        value = seed if key == "seed" and seed is not None else getattr(form, key)
        number = to_number(errors, key, value, integer=integer)
        if number is not None:
            kwargs[name] = number
    if not form.auto_layout:
        kwargs["mask_threshold"] = None
    specs, slots = [], []
    for k in _subject_slots(form):
        s = form.subjects[k]
        if not s.images:
            errors[f"s{k}.images"] = plain(f"s{k}.images", "add a reference image")
            continue
        scale = None
        if s.scale is not None and str(s.scale).strip() != "":
            scale = to_number(errors, f"s{k}.scale", s.scale, integer=False)
        specs.append(
            SubjectSpec(
                images=list(s.images),
                box=s.box.strip() or None,
                phrase=s.phrase,
                scale=scale,
                mask=s.mask,
            )
        )
        slots.append(k)
    if form.init_image:
        from .picture import picture_arguments

        boxes = [_parse_box_or_none(form.subjects[k].box) for k in slots]
        strength = to_number(errors, "strength", form.strength, integer=False)
        size = (kwargs.get("width", 0), kwargs.get("height", 0))
        kwargs.update(
            picture_arguments(
                form.init_image,
                form.repaint,
                strength,
                form.inpaint_mask,
                [b for b in boxes if b is not None],
                size,
                errors,
            )
        )
    found = ErrorList()
    request = None
    with found.check():
        request = GenerationRequest(subjects=specs, **kwargs)
    for j, spec in enumerate(specs):  # files readable as images, masks not empty
        with found.check("subjects", j):
            spec.load()
    if request is not None:  # the picture to start from and its mask readable
        for load in (request.load_init_image, request.load_inpaint_mask):
            with found.check():
                load()
    if request is not None and not found and not errors and tokenizer is not None:
        with found.check():  # the form sets both sides: no default size is used
            request.prepare(tokenizer, default_size=request.width)
    for err in found.errors:
        key = _field_of(err.location, slots)
        errors.setdefault(key, plain(key, err.rule, err.value))
    if errors or request is None:
        raise FormErrors(errors or {"prompt": "The request could not be built."})
    return request


def validate_form(form: Form, tokenizer: Any = None, *, live: bool = False) -> dict[str, str]:
    """``{field: message}`` for every problem :func:`build_request` finds; empty when valid.
    ``live``: only values that are wrong — not fields still to be filled in (an empty prompt, a
    subject without its image yet), which Generate reports."""
    try:
        build_request(form, seed=0 if form.random_seed else None, tokenizer=tokenizer)
    except FormErrors as err:
        return only_wrong(err.errors) if live else err.errors
    return {}


def only_wrong(errors: dict[str, str]) -> dict[str, str]:
    """The messages about wrong values, without those about fields still to be filled in."""
    return {k: m for k, m in errors.items() if not is_incomplete(m)}


def pick_seed(form: Form) -> int:
    """The seed to generate with: the form's, or a fresh random one when "random" is ticked."""
    return secrets.randbelow(MAX_SEED) if form.random_seed else int(form.seed)


def shown_slots(form: Form) -> int:
    """How many subject slots the page opens for ``form``: every used one, at least
    :data:`SHOWN_SUBJECTS`."""
    used = [k for k, s in enumerate(form.subjects) if not s.is_empty()]
    return max(SHOWN_SUBJECTS, used[-1] + 1 if used else 0)


def shift_out(form: Form, k: int) -> Form:
    """The form without subject slot ``k``: the slots after it move up one, the last is empty."""
    subjects = [s for j, s in enumerate(form.subjects) if j != k] + [SubjectForm()]
    return replace(form, subjects=subjects)


def clear_slot(form: Form, k: int) -> Form:
    """The form with subject slot ``k`` emptied (the other slots stay where they are)."""
    subjects = [SubjectForm() if j == k else s for j, s in enumerate(form.subjects)]
    return replace(form, subjects=subjects)


# ----------------------------------------------------------------------------------------------
# Request → form (load a request JSON or a sidecar)


def copy_files(paths: Iterable[str], directory: str | Path) -> list[str]:
    """Copies files into ``directory`` (created) as ``<stem>-<content hash><suffix>``; returns the
    copies' paths.

    The page only shows files from folders it may serve, and a result's sidecar should point at
    references kept with it. Naming copies by content makes a sidecar's text identify its inputs:
    two sidecars with the same bytes used the same images (see :func:`find_own_sidecar`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        source = Path(path)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        target = directory / f"{source.stem[:40]}-{digest}{source.suffix.lower()}"
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        copies.append(str(target))
    return copies


def find_own_sidecar(uploaded: str | Path, out_root: str | Path) -> Path:
    """Where an uploaded JSON came from, if it is one of this page's own results.

    A browser upload arrives without its folder, so a sidecar's relative reference paths would
    resolve against the upload cache. When a file with the same name and the same bytes exists in
    a run folder under ``out_root``, that copy is returned (its references sit next to it);
    otherwise ``uploaded`` itself (absolute paths in it still work).
    """
    uploaded = Path(uploaded)
    data = uploaded.read_bytes()
    root = Path(out_root)
    if root.is_dir():
        for candidate in sorted(root.glob(f"*/{uploaded.name}"), reverse=True):
            if (
                candidate.is_file()
                and candidate.stat().st_size == len(data)
                and candidate.read_bytes() == data
            ):
                return candidate
    return uploaded


def form_from_request(
    request: GenerationRequest, *, default_size: int, copy_to: str | Path | None = None
) -> Form:
    """A request (e.g. from :func:`msdiffusion.request.read_requests`) → the page's fields.

    Image and mask files are copied to ``copy_to`` (a fresh temporary folder by default) so the page
    can show them wherever they live. Requests with more than :data:`MAX_SUBJECTS` subjects, or
    with in-memory images, cannot be shown and raise ``InputError``.
    """
    if len(request.subjects) > MAX_SUBJECTS:
        raise InputError(
            "request", f"the page holds at most {MAX_SUBJECTS} subjects", len(request.subjects)
        )
    copy_to = Path(copy_to or tempfile.mkdtemp(prefix="msdiffusion-ui-"))
    subjects = []
    for k, spec in enumerate(request.subjects):
        images = [str(im) for im in spec.images]
        if not all(isinstance(im, (str, Path)) for im in spec.images):
            raise InputError(
                f"subjects[{k}].images",
                "must be file paths to be shown on the page",
                [type(im).__name__ for im in spec.images],
            )
        mask = None
        if spec.mask is not None:
            if not isinstance(spec.mask, (str, Path)):
                raise InputError(
                    f"subjects[{k}].mask",
                    "must be a file path to be shown on the page",
                    type(spec.mask).__name__,
                )
            mask = copy_files([str(spec.mask)], copy_to / f"s{k}_mask")[0]
        subjects.append(
            SubjectForm(
                images=copy_files(images, copy_to / f"s{k}"),
                phrase=spec.phrase,
                box=format_box(spec.box),
                scale=spec.scale,
                mask=mask,
            )
        )
    subjects += [SubjectForm() for _ in range(MAX_SUBJECTS - len(subjects))]
    pictures = {}
    for name in ("init_image", "inpaint_mask"):
        value = getattr(request, name)
        if value is not None and not isinstance(value, (str, Path)):
            raise InputError(
                name, "must be a file path to be shown on the page", type(value).__name__
            )
        pictures[name] = copy_files([str(value)], copy_to / name)[0] if value else None
    return Form(
        init_image=pictures["init_image"],
        inpaint_mask=pictures["inpaint_mask"],
        repaint="mask" if pictures["inpaint_mask"] else "whole",
        strength=request.strength if request.strength is not None else 0.8,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or "",
        subjects=subjects,
        width=request.width or default_size,
        height=request.height or default_size,
        steps=request.num_inference_steps,
        guidance=request.guidance_scale,
        scale=request.scale,
        seed=request.seed,
        random_seed=False,
        num_images=request.num_images,
        auto_layout=request.mask_threshold is not None,
        mask_threshold=0.5 if request.mask_threshold is None else request.mask_threshold,
        start_step=request.start_step,
        drop_grounding=request.drop_grounding_tokens,
        scheduler=request.scheduler or "",
    )


# ----------------------------------------------------------------------------------------------
# The canvas


def _parse_box_or_none(text: str) -> list[float] | None:
    from ..geometry import validate_box

    try:
        return list(validate_box(text)) if text.strip() else None
    except InputError:
        return None


def canvas_for(form: Form, active: int = 0, count: int | None = None) -> dict[str, Any]:
    """The layout canvas's value showing the form's boxes (unparsable boxes are not drawn) for
    its first ``count`` subject slots (default: :func:`shown_slots`)."""
    from .canvas import canvas_value

    width = form.width if isinstance(form.width, (int, float)) and form.width > 0 else 1024
    height = form.height if isinstance(form.height, (int, float)) and form.height > 0 else 1024
    from .picture import background_url

    return canvas_value(
        width,
        height,
        [s.phrase for s in form.subjects],
        [_parse_box_or_none(s.box) for s in form.subjects],
        active,
        shown_slots(form) if count is None else count,
        background=background_url(form.init_image),
    )
