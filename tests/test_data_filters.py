"""Data pipeline, pure parts: phrases, detection filters, matching, augmentation, config."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from msdiffusion.data.augment import augmented_reference
from msdiffusion.data.boxes import Detection, filter_detections, nms_detections
from msdiffusion.data.config import (
    AugmentConfig,
    BuildConfig,
    FilterConfig,
    MatchConfig,
    load_build_config,
)
from msdiffusion.data.crops import crop_with_margin
from msdiffusion.data.matching import Candidate, match_subjects
from msdiffusion.data.phrases import extract_phrases
from msdiffusion.data.stats import Stats
from msdiffusion.errors import InputError
from msdiffusion.geometry import iou_matrix
from msdiffusion.layout import find_phrase

STUFF = BuildConfig().stuff_words


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a man riding a horse on a beach", ["man", "horse"]),
        ("two dogs playing with a red ball in the snow", ["dogs", "red ball"]),
        (
            "arafed woman in a blue dress holding a small white cat",
            ["woman", "blue dress", "small white cat"],
        ),
        (
            "a red square, a blue circle and a yellow square",
            ["red square", "blue circle", "yellow square"],
        ),
        ("A Dog and a dog", ["Dog"]),  # repeats dropped, case-insensitively
        ("there is a building next to the sky", []),  # scenery only
        ("", []),
    ],
)
def test_phrases_are_entities_and_appear_in_the_caption(caption, expected):
    phrases = extract_phrases(caption, stuff_words=STUFF)
    assert phrases == expected
    for phrase in phrases:  # the manifest check's own rule: whole words, case-insensitive
        assert find_phrase(caption, phrase) is not None


def test_phrases_from_a_vocabulary_and_glued_words():
    caption = "A Golden Retriever and a cat near 3dogs"
    got = extract_phrases(caption, vocabulary=["golden retriever", "cat", "dogs", "retriever"])
    assert got == ["Golden Retriever", "cat"]  # longest entry wins; "3dogs" is not a word
    assert extract_phrases("3dogs and cats_1", stuff_words=STUFF) == []
    assert (
        len(
            extract_phrases(
                " ".join(f"a {w}" for w in "abcdefghij".replace("", "x")[1:]), max_phrases=3
            )
        )
        <= 3
    )


def _det(box, score=0.9, phrase=0):
    return Detection(tuple(box), score, phrase)


def test_filters_in_order_with_counts():
    cfg = FilterConfig(
        score_threshold=0.5,
        min_box_area=0.01,
        max_box_area=0.8,
        min_box_side=10,
        max_aspect=3.0,
        nms_iou=0.5,
        max_subjects=2,
    )
    dets = [
        _det((0.1, 0.1, 0.4, 0.4), 0.95),  # kept
        _det((0.12, 0.1, 0.42, 0.4), 0.90, 1),  # same object, another phrase: NMS
        _det((0.5, 0.5, 0.9, 0.9), 0.40),  # low score
        _det((0.0, 0.0, 1.0, 1.0), 0.99),  # covers everything: too big
        _det((0.5, 0.5, 0.52, 0.52), 0.99),  # too small
        _det((0.5, 0.1, 0.95, 0.2), 0.99),  # 4.5:1 → aspect
        _det((0.6, 0.5, 0.9, 0.9), 0.80),  # kept
        _det((0.1, 0.6, 0.3, 0.9), 0.70),  # cut by max_subjects
    ]
    stats = Stats()
    kept = filter_detections(dets, cfg, (200, 200), stats)
    assert [d.score for d in kept] == [0.95, 0.80]
    c, s = stats.counts, stats.skipped
    assert (
        c["detections"],
        c["after_score"],
        c["after_size"],
        c["after_aspect"],
        c["after_nms"],
        c["after_top_n"],
    ) == (8, 7, 5, 4, 3, 2)
    assert s == {
        "detection:low_score": 1,
        "detection:box_size": 2,
        "detection:aspect": 1,
        "detection:nms": 1,
        "detection:over_max_subjects": 1,
    }


def test_min_box_side_is_in_pixels_and_nms_is_greedy():
    cfg = FilterConfig(min_box_side=20, min_box_area=0.0, max_box_area=1.0)
    d = _det((0.0, 0.0, 0.1, 0.1))
    assert filter_detections([d], cfg, (100, 100), Stats()) == []  # 10 px
    assert filter_detections([d], cfg, (400, 400), Stats()) == [d]  # 40 px
    a, b, c = (
        _det((0, 0, 0.5, 0.5), 0.9),
        _det((0.1, 0, 0.6, 0.5), 0.8),
        _det((0.2, 0, 0.7, 0.5), 0.7),
    )
    assert iou_matrix(np.array([a.box]), np.array([c.box]))[0, 0] < 0.5
    assert nms_detections([c, b, a], 0.5) == [a, c]  # b overlaps a; c only overlaps the dropped b


def _cands(phrases):
    return [Candidate(i, (0, 0, 1, 1), p, 0.9) for i, p in enumerate(phrases)]


def test_matching_threshold_duplicates_and_one_to_one():
    cfg = MatchConfig(
        similarity_threshold=0.6, duplicate_similarity=0.98, duplicate_pixel_diff=0.02
    )
    # subjects: phrase 0, phrase 0, phrase 1, phrase 2, phrase 3
    phrases = [0, 0, 1, 2, 3]
    cands = _cands([0, 1, 2, 3])
    sim = np.array(
        [
            [0.90, 0.0, 0.0, 0.0],  # s0 → c0
            [0.85, 0.0, 0.0, 0.0],  # s1 wants c0 too: taken
            [0.0, 0.50, 0.0, 0.0],  # s2: below threshold
            [0.0, 0.0, 0.99, 0.0],  # s3: near-duplicate by features
            [0.0, 0.0, 0.0, 0.80],
        ]
    )  # s4: near-duplicate by pixels
    diff = np.full(sim.shape, 0.2)
    diff[4, 3] = 0.001
    stats = Stats()
    matches = match_subjects(phrases, cands, sim, diff, cfg, stats)
    assert [(m.subject, m.candidate) for m in matches] == [(0, 0)]
    assert stats.skipped == {
        "subject:reference_taken": 1,
        "subject:low_similarity": 1,
        "subject:near_duplicate": 2,
    }
    # phrase never detected in the references
    stats = Stats()
    assert match_subjects([5], cands, np.ones((1, 4)) * 0.9, np.ones((1, 4)), cfg, stats) == []
    assert stats.skipped == {"subject:not_found_in_reference": 1}
    # the most similar pair wins, whatever the subject order
    sim = np.array([[0.7, 0.65], [0.9, 0.1]])
    got = match_subjects([0, 0], _cands([0, 0]), sim, np.ones((2, 2)), cfg, Stats())
    assert [(m.subject, m.candidate) for m in got] == [(0, 1), (1, 0)]


def test_crop_with_margin_keeps_the_box():
    image = Image.new("RGB", (200, 100))
    crop = crop_with_margin(image, (0.25, 0.2, 0.5, 0.6), (0.5, 0.5, 0.5, 0.5))
    assert crop.rect == (25, 0, 125, 80)  # grown by 25 px / 20 px, clipped at the top
    x0, y0, x1, y1 = crop.box
    assert (x0 * 100, y0 * 80, x1 * 100, y1 * 80) == pytest.approx((25, 20, 75, 60))


def test_augmented_reference_geometry_mask_and_seed():
    image = Image.new("RGB", (120, 80), (40, 40, 40))
    image.paste((250, 0, 0), (30, 20, 60, 60))  # left half red...
    image.paste((0, 0, 250), (60, 20, 90, 60))  # ...right half blue
    mask = np.zeros((80, 120), bool)
    mask[20:60, 30:90] = True
    box = (0.25, 0.25, 0.75, 0.75)
    cfg = AugmentConfig(
        flip_p=1.0,
        margin=(0.2, 0.2),
        scale=(2.0, 2.0),
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
    )
    crop, mask_image = augmented_reference(image, box, mask, cfg, random.Random(0))
    assert crop.image.size == mask_image.size == (168, 112)  # (60+24, 40+16) × 2
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(crop.box, crop.image.size * 2, strict=True))
    assert (x0, y0, x1, y1) == (24, 16, 144, 96)
    left = np.asarray(crop.image)[56, x0 + 5]
    assert left[2] > 200 and left[0] < 50  # mirrored: blue is now on the left
    assert np.asarray(mask_image)[56, x0 + 5] == 255 and np.asarray(mask_image)[2, 2] == 0
    cfg = AugmentConfig()
    a = augmented_reference(image, box, None, cfg, random.Random("0:k:0"))[0]
    b = augmented_reference(image, box, None, cfg, random.Random("0:k:0"))[0]
    assert a.box == b.box and a.image.tobytes() == b.image.tobytes()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(InputError, match=r"config\.video\.sample_fpz: unknown key"):
        BuildConfig.from_dict({"video": {"sample_fpz": 2}})
    with pytest.raises(InputError, match=r"config\.filters\.max_subjects: must be an integer"):
        BuildConfig.from_dict({"filters": {"max_subjects": "4"}})
    with pytest.raises(InputError, match=r"config\.filters\.nms_iou: in \(0, 1\]"):
        BuildConfig.from_dict({"filters": {"nms_iou": 0}})
    with pytest.raises(InputError, match=r"config\.models\.detector: needs a 'kind'"):
        BuildConfig.from_dict({"models": {"detector": {"path": "x"}}})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InputError, match=re.escape("--config: not valid JSON")):
        load_build_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"seed": 3, "models": {"segmenter": None, "batch_size": 2}}))
    cfg = load_build_config(good, {"models": {"batch_size": 16}})
    assert cfg.seed == 3 and cfg.models.segmenter is None and cfg.models.batch_size == 16
    # speed settings do not change the fingerprint; output settings do
    assert cfg.fingerprint() == load_build_config(good).fingerprint()
    assert cfg.fingerprint() != load_build_config(good, {"seed": 4}).fingerprint()
    assert BuildConfig.from_dict(BuildConfig().to_dict()) == BuildConfig()
