"""The page's picture to start from, without a browser: the *Repaint* choices become image-to-image
or inpainting requests (a mask from the boxes, or the uploaded one), problems land next to their
field in plain words, a sidecar restores the picture fields, the output size follows the picture."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from msdiffusion.request import GenerationRequest
from msdiffusion.ui import handlers as h
from msdiffusion.ui.picture import background_url, fit_size, repaint_from_boxes


@pytest.fixture()
def files(tmp_path):
    Image.new("RGB", (120, 80), (90, 140, 60)).save(tmp_path / "garden.png")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "dog.png")
    mask = np.zeros((80, 120), np.uint8)
    mask[:, 60:] = 255
    Image.fromarray(mask).save(tmp_path / "right.png")
    return tmp_path


def form(files, **fields) -> h.Form:
    made = h.Form(prompt="a dog in the garden", width=96, height=64, steps=2, seed=1)
    made.subjects[0] = h.SubjectForm(
        images=[str(files / "dog.png")], phrase="dog", box="0.6, 0.2, 0.95, 0.9"
    )
    return replace(made, init_image=str(files / "garden.png"), **fields)


def test_repaint_choices_make_the_requests_they_say(files):
    whole = h.build_request(form(files, repaint="whole", strength=0.7))
    assert whole.kind == "image-to-image" and whole.strength == 0.7
    boxes = h.build_request(form(files, repaint="boxes", strength=1.0))
    assert boxes.kind == "inpainting"
    mask = boxes.load_inpaint_mask()  # (64, 96): exactly the box's pixels
    assert mask.shape == (64, 96) and mask.sum() == mask[12:58, 57:92].sum() == 46 * 35
    mine = h.build_request(form(files, repaint="mask", inpaint_mask=str(files / "right.png")))
    assert mine.kind == "inpainting" and mine.inpaint_mask == str(files / "right.png")
    assert h.build_request(replace(form(files), init_image=None)).kind == "text-to-image"


def test_picture_problems_are_said_next_to_their_field(files, tiny_factory):
    from msdiffusion.loading import load_pipeline

    tokenizer = load_pipeline("tiny", device="cpu").pipe.tokenizer
    errors = h.validate_form(form(files, repaint="mask"), tokenizer)
    assert "Add a mask" in errors["inpaint_mask"]
    wide = replace(form(files, repaint="mask", inpaint_mask=str(files / "right.png")))
    wide.subjects[0] = replace(wide.subjects[0], box="0.1, 0.2, 0.9, 0.9")
    errors = h.validate_form(wide, tokenizer)
    assert "inside the part that is repainted" in errors["s0.box"]
    empty = form(files, repaint="boxes")
    empty.subjects[0] = replace(empty.subjects[0], box="")
    assert "Draw a subject's box first" in h.validate_form(empty)["repaint"]
    (files / "notes.png").write_text("not an image")
    broken = h.validate_form(replace(form(files), init_image=str(files / "notes.png")))
    assert broken["init_image"] == "This file is not an image the page can open."


def test_a_sidecar_restores_the_picture_fields(files, tmp_path):
    request = GenerationRequest(
        "a dog",
        init_image=str(files / "garden.png"),
        inpaint_mask=str(files / "right.png"),
        strength=0.9,
        height=64,
        width=96,
    )
    restored = h.form_from_request(request, default_size=256, copy_to=tmp_path / "copies")
    assert restored.repaint == "mask" and restored.strength == 0.9
    assert Image.open(restored.init_image).size == (120, 80)
    assert restored.init_image.startswith(str(tmp_path / "copies"))
    canvas = h.canvas_for(restored)
    assert canvas["background"] == background_url(restored.init_image)
    assert canvas["background"].startswith("/gradio_api/file=")


def test_the_output_size_follows_the_picture():
    assert fit_size((120, 80), 64) == (96, 64)  # 3:2, the short side at least 64
    assert fit_size((4000, 3000), 1024) == (1184, 888)
    assert fit_size((1024, 1024), 1024) == (1024, 1024)
    assert repaint_from_boxes([], 10, 10) is None
