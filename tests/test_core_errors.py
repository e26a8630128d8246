"""User errors: located at their field, reported all at once, in the message format the CLI prints;
one box rounding rule for attention cells and image pixels."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from msdiffusion.configs import build
from msdiffusion.errors import ErrorList, InputError, InputErrors, format_location
from msdiffusion.geometry import box_to_pixels, rasterize_boxes
from msdiffusion.request import GenerationRequest, SubjectSpec


def test_a_location_reads_as_the_argument_and_keeps_the_message_format():
    err = InputError(("subjects", 1, "box"), "needs x0 < x1 and y0 < y1", (0.5, 0, 0.2, 1))
    assert err.location == ("subjects", 1, "box") and err.argument == "subjects[1].box"
    assert str(err) == "subjects[1].box: needs x0 < x1 and y0 < y1 (got (0.5, 0, 0.2, 1))"
    assert err.reason == "needs x0 < x1 and y0 < y1 (got (0.5, 0, 0.2, 1))"
    moved = err.at("requests", 2)
    assert moved.location == ("requests", 2, "subjects", 1, "box")
    assert str(moved).startswith("requests[2].subjects[1].box: needs")
    assert err.location == ("subjects", 1, "box")  # the original is untouched
    plain = InputError("--steps", "must be >= 1", 0)
    assert plain.location == ("--steps",) and str(plain) == "--steps: must be >= 1 (got 0)"
    assert format_location(("config", "video", "fps")) == "config.video.fps"


def test_an_error_list_raises_one_error_as_itself_and_several_together():
    errors = ErrorList()
    errors.raise_if_any()  # nothing found: nothing raised
    with errors.check("subjects", 0):
        raise InputError(("box",), "must be four numbers x0,y0,x1,y1", "1,2")
    with pytest.raises(InputError) as one:
        errors.raise_if_any()
    assert not isinstance(one.value, InputErrors)
    assert one.value.location == ("subjects", 0, "box")
    with errors.check():
        raise InputError("prompt", "must be a non-empty string", "")
    with pytest.raises(InputErrors) as both:
        errors.raise_if_any()
    assert [e.argument for e in both.value.errors] == ["subjects[0].box", "prompt"]
    assert both.value.argument == "subjects[0].box"  # reads as its first error
    assert "; prompt: must be a non-empty string" in str(both.value)


def test_a_request_reports_every_bad_field_at_once(tmp_path):
    image = tmp_path / "dog.png"
    image.write_bytes(b"")  # exists: the request checks presence, prepare() reads it
    with pytest.raises(InputErrors) as caught:
        GenerationRequest(
            prompt=" ",
            height=100,
            num_inference_steps=0,
            subjects=[
                SubjectSpec([str(image)], (0.5, 0.2, 0.3, 0.9), "dog"),
                SubjectSpec([str(tmp_path / "missing.png")], None, "", scale=-1),
            ],
        )
    assert {e.location for e in caught.value.errors} == {
        ("prompt",),
        ("height",),
        ("num_inference_steps",),
        ("subjects", 0, "box"),
        ("subjects", 1, "images", 0),
        ("subjects", 1, "phrase"),
        ("subjects", 1, "scale"),
        ("subjects", 1, "box"),  # no box, no mask, no auto layout
    }


def test_a_request_json_locates_its_errors():
    with pytest.raises(InputErrors) as caught:
        GenerationRequest.from_dict(
            {"prompt": "a dog", "steps": 3, "subjects": [{"images": [], "colour": "red"}]}
        )
    assert {e.argument for e in caught.value.errors} == {"request.steps", "subjects[0].colour"}


@dataclass
class _Inner:
    kind: str
    size: int = 1


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=lambda: _Inner("a"))
    sides: tuple[float, float] = (0.0, 1.0)
    names: list[str] = field(default_factory=list)


def test_configs_are_built_typed_with_errors_at_the_key():
    built = build(_Outer, {"inner": {"kind": "b", "size": 2.0}, "sides": [1, 2], "names": ["x"]})
    assert built == _Outer(_Inner("b", 2), (1.0, 2.0), ["x"])
    cases = [
        ({"inner": {"kind": "b", "sise": 2}}, "cfg.inner.sise", "unknown key (known: kind, size)"),
        ({"inner": {"size": 2}}, "cfg.inner", "needs a 'kind'"),
        ({"inner": {"kind": "b", "size": 1.5}}, "cfg.inner.size", "must be an integer"),
        ({"sides": [1]}, "cfg.sides", "must be a list of 2 values"),
        ({"names": ["x", 3]}, "cfg.names[1]", "must be a string"),
    ]
    for data, argument, rule in cases:
        with pytest.raises(InputError) as err:
            build(_Outer, data, ("cfg",))
        assert (err.value.argument, err.value.rule) == (argument, rule)


@pytest.mark.parametrize(
    "box", [(0.1, 0.2, 0.55, 0.9), (0.0, 0.0, 1.0, 1.0), (0.33, 0.5, 0.34, 0.51)]
)
@pytest.mark.parametrize("size", [(20, 10), (7, 13), (64, 64)])
def test_pixels_and_attention_cells_round_a_box_alike(box, size):
    width, height = size
    left, top, right, bottom = box_to_pixels(box, width, height)
    cells = rasterize_boxes(torch.tensor(box), height, width)  # (H, W)
    rows, cols = cells.nonzero(as_tuple=True)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (left, top, right, bottom)
