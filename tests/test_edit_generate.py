"""Putting subjects into an existing picture from the command line and through the inference core:
image-to-image (``--init-image``, ``--strength``) and inpainting (``--inpaint-mask``) — the output's
size, the picture kept outside the mask pixel for pixel, sidecars that replay bit-exactly, and every
wrong combination refused before a model loads (exit 2, one line, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES, run_console
from PIL import Image
from test_faces_generate import ok, refused

from msdiffusion.errors import InputError
from msdiffusion.request import GenerationRequest, SubjectSpec

DOG = str(EXAMPLES / "dog.png")
RIGHT = "0.55,0.15,0.95,0.85"  # a box inside the right half


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 100 × 70 photo (not a multiple of 8: the output is 96 × 64) and masks: its right half
    white, and one of another aspect ratio."""
    root = tmp_path_factory.mktemp("picture")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(root / "photo.png")
    mask = np.zeros((70, 100), np.uint8)
    mask[:, 50:] = 255
    Image.fromarray(mask).save(root / "right.png")
    Image.fromarray(np.full((50, 50), 255, np.uint8)).save(root / "square.png")
    Image.fromarray(np.zeros((70, 100), np.uint8)).save(root / "black.png")
    return root


def _inpaint(picture, *extra: str, box: str = RIGHT) -> list[str]:
    return [
        "generate",
        "--prompt",
        "a dog in the garden",
        "--init-image",
        str(picture / "photo.png"),
        "--inpaint-mask",
        str(picture / "right.png"),
        "--subject",
        DOG,
        "--box",
        box,
        "--phrase",
        "dog",
        "--steps",
        "2",
        "--seed",
        "3",
        *extra,
    ]


def test_inpainting_keeps_the_picture_outside_the_mask_and_replays_exactly(picture, tmp_path):
    out = tmp_path / "out"
    ok(run_console(*_inpaint(picture), "--out", str(out)))
    made = out / "0001"
    image = np.asarray(Image.open(made / "image_0.png"), dtype=int)
    assert image.shape == (64, 96, 3)  # the picture's size, rounded down to a multiple of 8
    source = Image.open(picture / "photo.png").convert("RGB")
    source = np.asarray(source.resize((96, 64), Image.Resampling.LANCZOS), dtype=int)
    left = slice(0, 47)  # the mask's black part at 96 px wide (its edge at 48)
    assert np.array_equal(image[:, left], source[:, left])  # pixel for pixel
    assert np.abs(image[:, 52:] - source[:, 52:]).mean() > 10  # repainted
    recipe = json.loads((made / "image_0.json").read_text())["request"]
    assert recipe["init_image"] == str(picture / "photo.png")
    assert recipe["inpaint_mask"] == str(picture / "right.png")
    assert recipe["strength"] == 0.9999 and (recipe["height"], recipe["width"]) == (64, 96)
    ok(run_console("generate", "--request", str(made / "image_0.json"), "--out", str(out)))
    again = np.asarray(Image.open(out / "0002" / "image_0.png"), dtype=int)
    assert np.array_equal(again, image)


def test_image_to_image_strength_zero_gives_the_picture_back(picture, tmp_path):
    out = tmp_path / "out"
    args = ["generate", "--prompt", "a dog", "--subject", DOG, "--box", RIGHT, "--phrase", "dog"]
    args += ["--init-image", str(picture / "photo.png"), "--strength", "0", "--steps", "4"]
    ok(run_console(*args, "--height", "64", "--width", "96", "--out", str(out)))
    image = np.asarray(Image.open(out / "0001" / "image_0.png"), dtype=int)
    source = Image.open(picture / "photo.png").convert("RGB")
    source = np.asarray(source.resize((96, 64), Image.Resampling.LANCZOS), dtype=int)
    assert np.abs(image - source).max() <= 1  # no step ran: the picture, through [-1, 1]


def test_wrong_editing_flags_are_refused_before_any_model_loads(picture, tmp_path):
    out = tmp_path / "out"
    photo, right = str(picture / "photo.png"), str(picture / "right.png")
    plain = ["generate", "--prompt", "a dog", "--steps", "1"]
    cases = [
        (plain + ["--strength", "0.5"], ["strength", "needs init_image"]),
        (plain + ["--inpaint-mask", right], ["inpaint_mask", "needs init_image"]),
        (plain + ["--init-image", photo, "--strength", "1.5"], ["strength", "1.5"]),
        (plain + ["--init-image", str(tmp_path / "none.png")], ["init_image", "does not exist"]),
        (
            _inpaint(picture, box="0.1,0.1,0.9,0.9"),
            ["subjects[0].box", "inside the repaint area of inpaint_mask", "latent cells"],
        ),
        (
            [*_inpaint(picture)[:5], "--inpaint-mask", str(picture / "square.png")],
            ["inpaint_mask", "aspect"],
        ),
        (
            [*_inpaint(picture)[:5], "--inpaint-mask", str(picture / "black.png")],
            ["inpaint_mask", "is empty"],
        ),
        (plain + ["--base-config", str(picture)], ["--base-config", "checkpoint file"]),
    ]
    for args, needles in cases:
        refused(run_console(*args, "--out", str(out)), *needles)
    assert not out.exists()


def test_requests_with_a_picture_check_their_fields(picture):
    photo = str(picture / "photo.png")
    with pytest.raises(InputError, match="control_image: works with text-to-image only"):
        GenerationRequest("a dog", init_image=photo, control_image=photo)
    with pytest.raises(InputError, match="init_image: must be a path or an image"):
        GenerationRequest("a dog", init_image=3)
    request = GenerationRequest("a dog", init_image=photo, height=64)
    assert request.kind == "image-to-image" and request.strength == 0.8
    assert request.size(256) == (64, 96)  # the width from the picture, the height as given
    inpaint = GenerationRequest("a dog", init_image=photo, inpaint_mask=str(picture / "right.png"))
    assert inpaint.kind == "inpainting" and inpaint.strength == 0.9999
    data = inpaint.to_dict(base_dir=picture)
    assert (data["init_image"], data["inpaint_mask"]) == ("photo.png", "right.png")
    assert GenerationRequest.from_dict(data, base_dir=picture).init_image == photo


def test_the_inference_core_uses_one_editing_pipeline_per_kind(tiny_factory, picture, tmp_path):
    from msdiffusion.inference import generate, write_result
    from msdiffusion.loading import load_pipeline
    from msdiffusion.presets import PRESETS

    model = load_pipeline("tiny", device="cpu")
    assert PRESETS["tiny"].vae_scale_factor == model.pipe.vae_scale_factor
    inpaint = model.pipeline("inpainting")
    assert inpaint is model.pipeline("inpainting") and inpaint.unet is model.pipe.unet
    assert model.pipeline("image-to-image").adapter is model.pipe.adapter
    photo = Image.open(picture / "photo.png").convert("RGB")
    mask = np.asarray(Image.open(picture / "right.png")) > 0  # in memory: kept as PNGs
    subject = SubjectSpec([DOG], tuple(float(v) for v in RIGHT.split(",")), "dog")
    requests = [
        GenerationRequest("a dog", [subject], init_image=photo, inpaint_mask=mask, seed=s)
        for s in (0, 1)
    ]
    for request in requests:
        request.num_inference_steps = 2
    results = generate(model, requests, batch_size=2, progress=False)
    assert [r.call_images for r in results] == [2, 2]  # one picture: one call
    written = write_result(results[0], tmp_path, model.info)
    recipe = json.loads(open(written[0]["sidecar"]).read())["request"]
    for name in ("init_image", "inpaint_mask"):
        assert (tmp_path / recipe[name]).is_file()
    assert recipe["inpaint_mask"].startswith("references/")
