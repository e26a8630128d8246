"""Data pipeline, model wrappers: the real transformers classes (tiny configs, random weights),
saved with ``save_pretrained`` and loaded back through ``load_models`` / ``from_pretrained``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_helpers import tiny_model_dirs

from msdiffusion.data.config import ModelsConfig, ModelSpec
from msdiffusion.data.detectors import GroundingDinoDetector
from msdiffusion.data.models import load_models, load_one
from msdiffusion.errors import InputError, ModelNotAvailableError

pytestmark = pytest.mark.usefixtures("single_thread")

IMAGES = [Image.new("RGB", (160, 90), (200, 30, 30)), Image.new("RGB", (90, 120), (20, 40, 200))]


@pytest.fixture(scope="module")
def dirs():
    return tiny_model_dirs()


def _spec(kind, path):
    return ModelSpec(kind, path)


def test_captioner_blip(dirs):
    models = load_models(
        ModelsConfig(
            captioner=ModelSpec("blip", dirs["blip"], {"max_new_tokens": 6}),
            detector=_spec("auto", dirs["grounding_dino"]),
            segmenter=None,
            features=_spec("auto", dirs["clip"]),
        ),
        "cpu",
    )
    captions = models.captioner.caption(IMAGES)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert models.captioner.caption(IMAGES) == captions  # greedy decoding: deterministic
    assert models.captioner.caption(IMAGES[:1]) == captions[:1]
    assert isinstance(models.detector, GroundingDinoDetector)  # "auto" read the model type


@pytest.mark.parametrize("kind", ["grounding_dino", "owlv2"])
def test_detectors_return_normalised_boxes_per_phrase(dirs, kind):
    detector = load_one("detector", ModelSpec(kind, dirs[kind]), torch.device("cpu"), torch.float32)
    phrases = [["red square", "cat"], ["blue circle"]]
    found = detector.detect(IMAGES, phrases)
    assert len(found) == 2
    for dets, names in zip(found, phrases, strict=True):
        assert dets, "random weights still score every box"
        scores = [d.score for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d in dets:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
            assert 0 <= d.score <= 1 and 0 <= d.phrase < len(names)
    # frames of one video share a size: batching them does not change a frame's result
    frames = [IMAGES[0], Image.new("RGB", (160, 90), (30, 200, 60))]
    both = detector.detect(frames, [["red square"], ["green square", "cat"]])
    alone = detector.detect(frames[1:], [["green square", "cat"]])[0]
    assert [d.phrase for d in alone] == [d.phrase for d in both[1]]
    np.testing.assert_allclose(
        [d.box + (d.score,) for d in alone], [d.box + (d.score,) for d in both[1]], atol=1e-4
    )
    assert detector.detect([], []) == []


def test_grounding_dino_prompt_spans():
    text, spans = GroundingDinoDetector.prompt(["Red Square", "cat"])
    assert text == "red square . cat ."
    assert [text[a:b] for a, b in spans] == ["red square", "cat"]


def test_sam_masks_and_features(dirs):
    device, dtype = torch.device("cpu"), torch.float32
    sam = load_one("segmenter", ModelSpec("sam", dirs["sam"]), device, dtype)
    masks = sam.segment(IMAGES, [[(0.1, 0.1, 0.5, 0.6), (0.5, 0.2, 0.9, 0.9)], []])
    assert len(masks) == 2 and len(masks[0]) == 2 and masks[1] == []
    assert all(m.shape == (90, 160) and m.dtype == bool for m in masks[0])
    for name in ("clip", "dinov2"):
        encoder = load_one("features", ModelSpec("auto", dirs[name]), device, dtype)
        features = encoder.embed(IMAGES + IMAGES[:1])
        assert features.shape == (3, 16) and features.dtype == torch.float32
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(features[0], features[2])


def test_model_errors_name_the_setting(tmp_path):
    device, dtype = torch.device("cpu"), torch.float32
    with pytest.raises(ModelNotAvailableError, match=r"config\.models\.detector\.path"):
        load_one("detector", ModelSpec("grounding_dino", str(tmp_path / "missing")), device, dtype)
    with pytest.raises(InputError, match=r"config\.models\.segmenter\.kind: one of sam"):
        load_one("segmenter", ModelSpec("sam2", "x"), device, dtype)
    with pytest.raises(InputError, match=r"config\.models\.detector\.kind: cannot import"):
        load_one("detector", ModelSpec("no_such_module:Detector", None), device, dtype)
    # a plug-in: module:attribute, called with (path, device, dtype, **options)
    plugin = load_one(
        "detector",
        ModelSpec("msdiffusion.data.synthetic:colour_detector", None, {"tolerance": 10.0}),
        device,
        dtype,
    )
    assert plugin.tolerance == 10.0


def test_detection_of_mixed_sizes_does_not_depend_on_the_batch(dirs):
    """Frames of different videos share a model batch; Grounding DINO pads a batch to its
    largest image, so the detect stage batches equal sizes only: a frame's detections are
    those it gets alone."""
    from msdiffusion.data.stages import _batched_by_size

    detector = load_one(
        "detector",
        ModelSpec("grounding_dino", dirs["grounding_dino"]),
        torch.device("cpu"),
        torch.float32,
    )
    frames = [IMAGES[1], IMAGES[0], Image.new("RGB", (160, 90), (30, 200, 60))]
    phrases = [["blue circle"], ["red square", "cat"], ["green square"]]
    mixed = _batched_by_size(detector.detect, frames, phrases, size=8)
    for frame, names, dets in zip(frames, phrases, mixed, strict=True):
        alone = detector.detect([frame], [names])[0]
        assert [d.phrase for d in dets] == [d.phrase for d in alone]
        np.testing.assert_allclose(
            [d.box + (d.score,) for d in dets], [d.box + (d.score,) for d in alone], atol=1e-5
        )
    padded = detector.detect(frames, phrases)[0]  # what a plain batch would give the first
    assert not np.allclose(
        [d.box + (d.score,) for d in padded[:5]],
        [d.box + (d.score,) for d in mixed[0][:5]],
        atol=1e-5,
    )
