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
from msdiffusion.ui import layouts

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
    assert len(values) == len(h.FORM_FIELDS) == 21 + 5 * h.MAX_SUBJECTS
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
    # an empty negative prompt is none at all (the pipeline's own unconditional), as in the API
    assert h.build_request(replace(filled_form(refs), negative_prompt=" ")).negative_prompt is None
    assert h.build_request(replace(filled_form(refs), scheduler="euler-a")).scheduler == "euler-a"
    assert "scheduler" in h.validate_form(replace(filled_form(refs), scheduler="fast"))
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
    # in plain words, for someone who drew a box rather than typed a tuple
    assert errors["s3.mask"] == "The mask is black everywhere: paint the region white."
    assert errors["prompt"] == "Describe the picture first."
    assert errors["width"] == "Use a multiple of 8 pixels (e.g. 1024, 768, 512); this is 100."
    assert errors["guidance"] == "Type a number here (not 'x')."
    assert errors["s0.box"].startswith("Four numbers from 0 to 1")
    assert errors["s1.images"] == "Add a reference image (or clear this subject)."
    assert errors["s2.scale"] == "A number of 0 or more (empty: the global scale)."
    assert errors["s3.images"] == "This file is not an image the page can open."
    assert errors["steps"] == "Use a value from 1 up to 1000."
    with pytest.raises(h.FormErrors) as caught:
        h.build_request(form)
    assert caught.value.errors == errors
    assert "subject 2 images: Add a reference image" in str(caught.value)  # one line, no trace
    # while the form is being filled in, only wrong values are reported, not missing ones
    live = h.validate_form(form, live=True)
    assert set(live) == set(errors) - {"prompt", "s1.images"}


def test_a_box_is_needed_without_auto_layout(refs):
    form = filled_form(refs)
    form.subjects[2] = replace(form.subjects[2], box="")
    assert set(h.validate_form(form)) == {"s2.box"}
    assert h.validate_form(replace(form, auto_layout=True)) == {}
    errors = h.validate_form(replace(form, auto_layout=True, mask_threshold=1.0))
    assert errors["mask_threshold"] == "Use a value from 0 below 1."


def test_pipeline_layout_rules_are_checked_up_front(refs, tmp_path):
    from msdiffusion.testing.tokenizers import char_tokenizer

    tokenizer = char_tokenizer(tmp_path / "tokenizer")
    form = filled_form(refs)
    assert h.validate_form(form, tokenizer=tokenizer) == {}
    auto = replace(form, auto_layout=True, prompt="a dog on the beach")  # no "cat" in it
    assert set(h.validate_form(auto, tokenizer=tokenizer)) == {"s2.phrase"}
    assert "Auto layout needs this word" in h.validate_form(auto, tokenizer=tokenizer)["s2.phrase"]
    tall = tmp_path / "tall.png"
    Image.new("L", (50, 200), 255).save(tall)  # 1:4, the output is 4:3
    form.subjects[2] = replace(form.subjects[2], mask=str(tall))
    errors = h.validate_form(form, tokenizer=tokenizer)
    assert set(errors) == {"s2.mask"} and "the picture's shape (256 × 192)" in errors["s2.mask"]


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
    assert [s.is_empty() for s in back.subjects] == [False, False] + [True] * (h.MAX_SUBJECTS - 2)
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
    for layout in layouts.EXAMPLE_LAYOUTS:
        boxes, template = layouts.layout_boxes(layout)
        assert len(boxes) == len(layout.phrases)
        if spec is not None:  # the shared benchmark definition, when this checkout has it
            assert boxes == spec["combination_types"][layout.combination_type]["boxes"]
            assert template == spec["combination_types"][layout.combination_type]["prompts"][0]
    titles = [layout.title for layout in layouts.EXAMPLE_LAYOUTS]
    assert titles == ["Side by side", "Three in a row", "Subject + scene", "Subject + worn item"]

    # boxes go to the subjects that have an image, in slot order; the others are left alone
    form = filled_form(refs)  # images in slots 0 and 2
    form.subjects[3] = h.SubjectForm(images=[refs[0]], box="0, 0, 1, 1")
    form.subjects[4] = h.SubjectForm(phrase="hat")  # no image: an example never fills it
    three, note = layouts.apply_layout(replace(form, prompt=""), layouts.EXAMPLE_LAYOUTS[1])
    assert [s.box for s in three.subjects[:5]] == [
        "0, 0.25, 0.35, 0.75",
        "",
        "0.35, 0.25, 0.65, 0.75",
        "0.65, 0.25, 1, 0.75",
        "",
    ]
    assert [s.phrase for s in three.subjects[:5]] == ["dog", "", "cat", "rabbit", "hat"]
    assert three.prompt == "a dog, a cat, and a rabbit in a room" and note == ""
    # 2 boxes, 3 subjects with images
    side, note = layouts.apply_layout(form, layouts.EXAMPLE_LAYOUTS[0])
    assert side.prompt == form.prompt and note == ""
    assert [s.box for s in side.subjects[:4]][3] == ""  # the third one's box is cleared
    # too few subjects with images: the boxes that fit, and a note saying what to add
    one = h.Form(subjects=[h.SubjectForm(images=[refs[0]])] + [h.SubjectForm()] * 7)
    partial, note = layouts.apply_layout(one, layouts.EXAMPLE_LAYOUTS[1])
    assert partial.subjects[0].box == "0, 0.25, 0.35, 0.75"
    assert all(s.is_empty() for s in partial.subjects[1:]) and partial.prompt == ""
    assert "add reference images to 2 more" in note
    none, note = layouts.apply_layout(h.Form(), layouts.EXAMPLE_LAYOUTS[0])
    assert none == h.Form() and note.startswith("Add a reference image to a subject first")


def test_canvas_value_follows_the_form(refs):
    form = filled_form(refs)
    form.subjects[1] = h.SubjectForm(phrase="hat", box="not a box")
    value = h.canvas_for(form, active=2)
    assert (value["width"], value["height"], value["active"]) == (256, 192, 2)
    assert value["shown"] == 3 == h.shown_slots(form)  # every used slot, at least two
    assert h.canvas_for(form, count=5)["shown"] == 5
    assert h.shown_slots(h.Form()) == h.SHOWN_SUBJECTS == 2
    assert len(value["subjects"]) == h.MAX_SUBJECTS
    assert [s["label"] for s in value["subjects"][:4]] == ["dog", "hat", "cat", ""]
    assert [s["box"] for s in value["subjects"][:4]] == [
        [0.05, 0.3, 0.5, 0.9],
        None,
        [0.5, 0.3, 0.95, 0.9],
        None,
    ]
    assert h.format_box((0.0, 0.25, 1 / 3, 1.0)) == "0, 0.25, 0.3333, 1"
    assert h.format_box(None) == ""


def test_subjects_are_added_cleared_and_removed(refs):
    form = filled_form(refs)  # slots 0 and 2 used
    cleared = h.clear_slot(form, 0)
    assert cleared.subjects[0].is_empty() and cleared.subjects[2] == form.subjects[2]
    removed = h.shift_out(form, 0)  # the slots after it move up
    assert removed.subjects[1] == form.subjects[2] and len(removed.subjects) == h.MAX_SUBJECTS
    assert removed.subjects[-1].is_empty()
    many = h.Form(
        prompt=" ".join(f"thing{k}" for k in range(h.MAX_SUBJECTS)),
        width=256,
        height=256,
        subjects=[
            h.SubjectForm(images=[refs[0]], phrase=f"thing{k}", box=f"0, 0, {0.1 * (k + 1)}, 1")
            for k in range(h.MAX_SUBJECTS)
        ],
    )
    assert h.MAX_SUBJECTS > 4 and len(h.build_request(many).subjects) == h.MAX_SUBJECTS


def test_the_lora_in_use_is_chosen_recorded_and_restored(refs):
    from msdiffusion.ui import loras as lo

    paths = ["/models/a/style.safetensors", "/models/b/style.safetensors", "/m/ink.safetensors"]
    assert lo.lora_labels(paths) == [
        ("none", ""),
        ("a/style.safetensors", paths[0]),
        ("b/style.safetensors", paths[1]),
        ("ink.safetensors", paths[2]),
    ]
    form = replace(filled_form(refs), lora=paths[2], lora_scale=0.5)
    assert lo.lora_choice(form, paths) == (2, 0.5)
    assert lo.lora_choice(replace(form, lora=""), paths) == (None, 0.5)
    with pytest.raises(h.FormErrors) as caught:
        lo.lora_choice(replace(form, lora="/elsewhere.safetensors", lora_scale=-1), paths)
    assert set(caught.value.errors) == {"lora", "lora_scale"}
    assert set(lo.lora_errors(replace(form, lora_scale=-1), paths)) == {"lora_scale"}
    assert lo.lora_errors(form, paths) == {}
    info = {"preset": "tiny", "settings": {"preset": "tiny", "lora": paths, "lora_scale": 1.0}}
    used = lo.info_with_lora(info, paths, 2, 0.5)
    assert used["settings"]["lora"] == [paths[2]] and used["settings"]["lora_scale"] == 0.5
    assert info["settings"]["lora"] == paths  # the model's own record is left as it is
    assert lo.info_with_lora(info, paths, None, 1.0)["settings"]["lora"] == []
    assert lo.lora_from_sidecar({"model": used}, paths) == (paths[2], 0.5)
    assert lo.lora_from_sidecar({"model": {"settings": {"lora": []}}}, paths) == ("", 1.0)
    assert lo.lora_from_sidecar({"model": {"settings": {"lora": ["/x"]}}}, paths) is None
    assert lo.lora_from_sidecar({"request": {}}, paths) is None


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
