"""The page's example layouts: MS-Bench's preset boxes of a combination type, placed on the
subjects that have a reference image (an example never adds a subject that would stop Generate)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .handlers import Form, format_box

__all__ = ["ExampleLayout", "EXAMPLE_LAYOUTS", "layout_boxes", "apply_layout"]


@dataclass(frozen=True)
class ExampleLayout:
    """A button on the page: an MS-Bench combination type's boxes, with example phrases."""

    title: str
    combination_type: str
    phrases: tuple[str, ...]


EXAMPLE_LAYOUTS = (
    ExampleLayout("Side by side", "living_living", ("dog", "cat")),
    ExampleLayout("Three in a row", "living_living_living", ("dog", "cat", "rabbit")),
    ExampleLayout("Subject + scene", "living_scene", ("dog", "mountain")),
    ExampleLayout("Subject + worn item", "living_upwearing", ("dog", "hat")),
)


def layout_boxes(layout: ExampleLayout) -> tuple[list[list[float]], str]:
    """The layout's boxes and its first prompt template, from the packaged MS-Bench definition."""
    from ..benchmarks import load_msbench_spec

    spec, _ = load_msbench_spec()
    ctype = spec["combination_types"][layout.combination_type]
    return [list(map(float, box)) for box in ctype["boxes"]], ctype["prompts"][0]


def apply_layout(form: Form, layout: ExampleLayout) -> tuple[Form, str]:
    """The form with ``layout``'s boxes on the subjects that have a reference image, in slot order
    (subjects without one are left as they are: an example never adds a subject that would stop
    Generate); their empty phrases get the layout's examples, an empty prompt its template when
    every box found a subject. Returns the form and a note for the page ("" when all fit)."""
    boxes, template = layout_boxes(layout)
    with_images = [k for k, s in enumerate(form.subjects) if s.images]
    placed = dict(zip(with_images, range(len(boxes))))
    subjects = []
    for k, subject in enumerate(form.subjects):
        if k in placed:
            j = placed[k]
            phrase = subject.phrase if subject.phrase.strip() else layout.phrases[j]
            subjects.append(replace(subject, box=format_box(boxes[j]), phrase=phrase))
        elif subject.images:  # more subjects than the layout has boxes: theirs are cleared
            subjects.append(replace(subject, box=""))
        else:
            subjects.append(subject)
    prompt = form.prompt
    if not prompt.strip() and len(placed) == len(boxes):
        phrases = [subjects[k].phrase.strip() for k in sorted(placed, key=placed.get)]
        prompt = template.format(*phrases)
    missing = len(boxes) - len(placed)
    note = ""
    if missing == len(boxes):
        note = f"Add a reference image to a subject first: *{layout.title}* places {len(boxes)}."
    elif missing:
        note = (
            f"*{layout.title}* has {len(boxes)} boxes: add reference images to {missing} more "
            "subject(s) for the rest."
        )
    return replace(form, subjects=subjects, prompt=prompt), note
