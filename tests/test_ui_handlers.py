"""The web UI's handlers without a browser: form → request, validation messages per field, sidecar
round trip, example layouts, and the `ui` command's arguments."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from msdiffusion.inference import GenerationResult, write_result
from msdiffusion.request import read_requests
from msdiffusion.ui import handlers as h

REPO = Path(__file__).resolve().parents[1]
MSBENCH_SPEC = REPO.parent / "shared" / "data" / "msbench" / "spec.json"


@pytest.fixture()
def refs(tmp_path: Path) -> list[str]:
    paths = []
    for name, color in (("red.png", (200, 30, 30)), ("blue.jpg", (30, 30, 200))):
        path = tmp_path / "uploads" / name
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), color).save(path)
        paths.append(str(path))
    return paths


def filled_form(refs: list[str]) -> h.Form:
    form = h.Form(
        prompt="a dog and a cat on the beach",
        negative_prompt="blurry",
        width=256,
        height=192,
        steps=3,
        guidance=5.0,
        scale=0.7,
        seed=11,
        num_images=2,
    )
    form.subjects[0] = h.SubjectForm(images=[refs[0]], phrase="dog", box="0.05, 0.3, 0.5, 0.9")
    # slot 1 left empty: slot 2 becomes the request's second subject
    form.subjects[2] = h.SubjectForm(
        images=[refs[1], refs[0]], phrase="cat", box="0.5 0.3 0.95 0.9", scale="0.8"
    )
    return form


def test_widget_values_round_trip(refs):
    form = filled_form(refs)
    values = h.form_to_values(form)
    assert len(values) == len(h.FORM_FIELDS) == 14 + 5 * h.MAX_SUBJECTS
    # a gallery hands over (path, caption) pairs; the scale field is text
    values[h.FORM_FIELDS.index("s0.images")] = [(refs[0], None)]
    again = h.form_from_values(values)
    assert again.subjects[0].images == [refs[0]]
    assert again.subjects[2].scale == "0.8"
    assert h.form_to_values(again) == h.form_to_values(form)
    with pytest.raises(ValueError):
        h.form_from_values(values[:-1])


def test_build_request_from_the_form(refs):
    request = h.build_request(filled_form(refs))
    assert (request.prompt, request.negative_prompt) == ("a dog and a cat on the beach", "blurry")
    assert (request.width, request.height, request.num_inference_steps) == (256, 192, 3)
    assert (request.guidance_scale, request.scale, request.seed, request.num_images) == (
        5.0,
        0.7,
        11,
        2,
    )
    assert request.mask_threshold is None  # auto layout off: the threshold field is ignored
    assert [s.phrase for s in request.subjects] == ["dog", "cat"]
    assert [tuple(s.box) for s in request.subjects] == [
        (0.05, 0.3, 0.5, 0.9),
        (0.5, 0.3, 0.95, 0.9),
    ]
    assert [s.scale for s in request.subjects] == [None, 0.8]
    assert request.subjects[1].images == [refs[1], refs[0]]
    assert h.build_request(filled_form(refs), seed=99).seed == 99

    auto = replace(filled_form(refs), auto_layout=True, mask_threshold=0.4)
    auto.subjects[0] = replace(auto.subjects[0], box="")  # boxes are optional under auto layout
    request = h.build_request(auto)
    assert request.mask_threshold == 0.4 and request.subjects[0].box is None

    # widgets hand over whole floats for integer fields
    assert h.build_request(replace(filled_form(refs), steps=4.0, width=256.0)).width == 256


def test_validation_messages_name_their_field(refs, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    form = replace(filled_form(refs), prompt=" ", width=100, steps=0, guidance="x")
    form.subjects[0] = replace(form.subjects[0], box="0.5, 0.2, 0.3")  # three numbers
    form.subjects[1] = h.SubjectForm(phrase="hat")  # a phrase, no image
    form.subjects[2] = replace(form.subjects[2], scale="-1")  # negative scale
    form.subjects[3] = h.SubjectForm(
        images=[str(broken)], phrase="cup", box="0,0,1,1", mask=refs[1]
    )  # a dark mask: no pixel inside
    errors = h.validate_form(form)
    assert set(errors) == {
        "prompt",
        "width",
        "steps",
        "guidance",
        "s0.box",
        "s1.images",
        "s2.scale",
        "s3.images",
        "s3.mask",
    }
    assert "empty" in errors["s3.mask"]
    assert "non-empty" in errors["prompt"]
    assert "multiple of 8" in errors["width"]
    assert "must be a number" in errors["guidance"]
    assert "four numbers" in errors["s0.box"]
    assert "add a reference image" in errors["s1.images"]
    assert ">= 0" in errors["s2.scale"]
    assert "not a readable image" in errors["s3.images"]
    with pytest.raises(h.FormErrors) as caught:
        h.build_request(form)
    assert caught.value.errors == errors
    assert "subject 2 images: add a reference image" in str(caught.value)  # one line, no trace


def test_a_box_is_needed_without_auto_layout(refs):
    form = filled_form(refs)
    form.subjects[2] = replace(form.subjects[2], box="")
    assert set(h.validate_form(form)) == {"s2.box"}
    assert h.validate_form(replace(form, auto_layout=True)) == {}
    errors = h.validate_form(replace(form, auto_layout=True, mask_threshold=1.0))
    assert "< 1.0" in errors["mask_threshold"]


def test_pipeline_layout_rules_are_checked_up_front(refs, tmp_path):
    from msdiffusion.testing.tokenizers import char_tokenizer

    tokenizer = char_tokenizer(tmp_path / "tokenizer")
    form = filled_form(refs)
    assert h.validate_form(form, tokenizer=tokenizer) == {}
    auto = replace(form, auto_layout=True, prompt="a dog on the beach")  # no "cat" in it
    assert set(h.validate_form(auto, tokenizer=tokenizer)) == {"s2.phrase"}
    assert "must appear in the prompt" in h.validate_form(auto, tokenizer=tokenizer)["s2.phrase"]
    tall = tmp_path / "tall.png"
    Image.new("L", (50, 200), 255).save(tall)  # 1:4, the output is 4:3
    form.subjects[2] = replace(form.subjects[2], mask=str(tall))
    errors = h.validate_form(form, tokenizer=tokenizer)
    assert set(errors) == {"s2.mask"} and "aspect ratio" in errors["s2.mask"]


def test_error_locations_map_to_slots():
    slots = [0, 2, 3]
    assert h._field_of(("subjects", 1, "images", 0), slots) == "s2.images"
    assert h._field_of(("requests", 0, "subjects", 2, "mask"), slots) == "s3.mask"
    assert h._field_of(("subjects", 0, "box"), slots) == "s0.box"
    assert h._field_of(("num_inference_steps",), slots) == "steps"
    assert h._field_of(("guidance_scale",), slots) == "guidance"
    assert h.field_label("s2.box") == "subject 3 box"


def test_sidecar_restores_every_field(refs, tmp_path):
    """Form → request → write_result's sidecar → (uploaded elsewhere) → the same form."""
    form = filled_form(refs)
    mask = tmp_path / "uploads" / "mask.png"
    Image.new("L", (64, 48), 255).save(mask)
    form.subjects[0] = replace(form.subjects[0], mask=str(mask))
    out_root = tmp_path / "outputs"
    run_dir = out_root / "run1"
    copied = replace(
        form,
        subjects=[
            replace(
                s,
                images=h.copy_files(s.images, run_dir / "references" / f"s{k}"),
                mask=h.copy_files([s.mask], run_dir / "references" / "m")[0] if s.mask else None,
            )
            for k, s in enumerate(form.subjects)
        ],
    )
    request = h.build_request(copied, seed=40)
    result = GenerationResult(
        request, [Image.new("RGB", (256, 192)), Image.new("RGB", (256, 192))], [40, 41]
    )
    records = write_result(result, run_dir, {"preset": "tiny"}, stem="image")
    sidecar = Path(records[1]["sidecar"])
    assert json.loads(sidecar.read_text())["request"]["subjects"][0]["images"][0].startswith(
        "references/"
    )  # the recipe points at copies kept with the result

    uploaded = tmp_path / "upload-cache" / sidecar.name  # a browser upload loses the folder
    uploaded.parent.mkdir()
    shutil.copy(sidecar, uploaded)
    assert h.find_own_sidecar(uploaded, out_root) == sidecar
    assert h.find_own_sidecar(uploaded, tmp_path / "elsewhere") == uploaded

    [loaded] = read_requests(h.find_own_sidecar(uploaded, out_root))
    back = h.form_from_request(loaded, default_size=1024, copy_to=tmp_path / "shown")
    expected = replace(form, seed=41, num_images=1)  # that image's seed; one image per sidecar
    for name in (
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "steps",
        "guidance",
        "scale",
        "seed",
        "num_images",
        "auto_layout",
        "start_step",
        "drop_grounding",
    ):
        assert getattr(back, name) == getattr(expected, name), name
    # the used slots come back in order, first slots first (slot positions are not in a recipe)
    used = [s for s in expected.subjects if not s.is_empty()]
    assert [s.is_empty() for s in back.subjects] == [False, False, True, True]
    for k, (got, want) in enumerate(zip(back.subjects[:2], used, strict=True)):
        assert got.phrase == want.phrase, k
        assert (
            h.canvas_for(replace(back, subjects=[got]))["subjects"][0]["box"]
            == h.canvas_for(replace(back, subjects=[want]))["subjects"][0]["box"]
        )
        assert (float(got.scale) if got.scale is not None else None) == (
            float(want.scale) if want.scale is not None else None
        )
        assert [Path(p).read_bytes() for p in got.images] == [
            Path(p).read_bytes() for p in want.images
        ]
        assert (got.mask is None) == (want.mask is None)
        assert all(Path(p).is_relative_to(tmp_path / "shown") for p in got.images)
    assert h.build_request(back).to_dict()["subjects"][1]["box"] == [0.5, 0.3, 0.95, 0.9]


def test_copies_are_named_by_content(tmp_path, refs):
    a = h.copy_files([refs[0]], tmp_path / "a")[0]
    b = h.copy_files([refs[0]], tmp_path / "a")[0]
    assert a == b and Path(a).name.startswith("red-") and Path(a).suffix == ".png"
    other = tmp_path / "other" / "red.png"
    other.parent.mkdir()
    Image.new("RGB", (4, 4), (0, 255, 0)).save(other)
    assert h.copy_files([str(other)], tmp_path / "a")[0] != a


def test_example_layouts_are_msbench_presets(refs):
    spec = json.loads(MSBENCH_SPEC.read_text()) if MSBENCH_SPEC.is_file() else None
    for layout in h.EXAMPLE_LAYOUTS:
        boxes, template = h.layout_boxes(layout)
        assert len(boxes) == len(layout.phrases)
        if spec is not None:  # the shared benchmark definition, when this checkout has it
            assert boxes == spec["combination_types"][layout.combination_type]["boxes"]
            assert template == spec["combination_types"][layout.combination_type]["prompts"][0]
    titles = [layout.title for layout in h.EXAMPLE_LAYOUTS]
    assert titles == ["Side by side", "Three in a row", "Subject + scene", "Subject + worn item"]

    form = filled_form(refs)
    form.subjects[3] = h.SubjectForm(box="0, 0, 1, 1")
    three = h.apply_layout(replace(form, prompt=""), h.EXAMPLE_LAYOUTS[1])
    assert [s.box for s in three.subjects] == [
        "0, 0.25, 0.35, 0.75",
        "0.35, 0.25, 0.65, 0.75",
        "0.65, 0.25, 1, 0.75",
        "",
    ]
    assert [s.phrase for s in three.subjects] == ["dog", "cat", "cat", ""]  # typed ones kept
    assert three.prompt == "a dog, a cat, and a cat in a room"
    assert h.apply_layout(form, h.EXAMPLE_LAYOUTS[0]).prompt == form.prompt


def test_canvas_value_follows_the_form(refs):
    form = filled_form(refs)
    form.subjects[1] = h.SubjectForm(phrase="hat", box="not a box")
    value = h.canvas_for(form, active=2)
    assert (value["width"], value["height"], value["active"]) == (256, 192, 2)
    assert [s["label"] for s in value["subjects"]] == ["dog", "hat", "cat", ""]
    assert [s["box"] for s in value["subjects"]] == [
        [0.05, 0.3, 0.5, 0.9],
        None,
        [0.5, 0.3, 0.95, 0.9],
        None,
    ]
    assert h.format_box((0.0, 0.25, 1 / 3, 1.0)) == "0, 0.25, 0.3333, 1"
    assert h.format_box(None) == ""


def test_ui_command_arguments():
    from msdiffusion.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["ui", "--preset", "tiny"])
    assert (args.host, args.port, args.share, args.preset) == ("127.0.0.1", 7860, False, "tiny")
    assert args.func.__module__ == "msdiffusion.ui"
    args = parser.parse_args(["ui", "--host", "0.0.0.0", "--port", "0", "--share"])
    assert (args.host, args.port, args.share) == ("0.0.0.0", 0, True)
    # the CLI imports the module for --help: no gradio, no torch there
    code = (
        "import sys, msdiffusion.ui; "
        "print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
