"""The toy world: a deterministic generator, metrics with known answers, the toy benchmark in the
evaluation harness, and the training set in the manifest format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from msdiffusion.geometry import box_to_pixels
from msdiffusion.toyworld.bench import CANDIDATES, toy_samples, write_toy_benchmark
from msdiffusion.toyworld.metrics import (
    background_of,
    classify_pixels,
    colour_histogram,
    identity_score,
    layout_share,
)
from msdiffusion.toyworld.world import (
    BACKGROUNDS,
    CLASSES,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    SUBJECT_COLORS,
    Placed,
    Scene,
    held_out_subjects,
    is_held_out,
    render,
    sample_reference,
    sample_scene,
)


def test_generator_is_deterministic_and_order_free():
    a = [sample_scene(0, "train", i) for i in (5, 3, 9)]
    b = [sample_scene(0, "train", i) for i in (9, 3, 5)][::-1]
    assert a == b
    assert sample_scene(1, "train", 5) != a[0]  # the seed matters
    image_a, masks_a = render(a[0])
    image_b, masks_b = render(b[0])
    assert image_a.tobytes() == image_b.tobytes()
    assert all(np.array_equal(x, y) for x, y in zip(masks_a, masks_b, strict=True))


def test_boxes_and_pixels_agree():
    for i in range(40):
        scene = sample_scene(0, "train", i)
        image, masks = render(scene)
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        for placed, mask in zip(scene.subjects, masks, strict=True):
            c0, r0, c1, r1 = box_to_pixels(placed.box, IMAGE_SIZE, IMAGE_SIZE)
            outside = mask.copy()
            outside[r0:r1, c0:c1] = 0
            assert outside.sum() == 0, "a subject drew outside its box"
            rows, cols = np.nonzero(mask > 0.5)
            if len(rows):  # the silhouette spans its box (up to occlusion by later subjects)
                assert cols.max() - cols.min() + 1 >= 0.5 * (c1 - c0)
        assert 1 <= len(scene.subjects) <= 3
        assert len({p.cls for p in scene.subjects}) == len(scene.subjects)
        for placed in scene.subjects:
            assert placed.cls in scene.caption
        assert scene.caption.endswith(f"on {scene.background}")


def test_held_out_identities_never_appear_in_training():
    assert len(HELD_OUT_PAIRS) == 8
    for i in range(400):
        for placed in sample_scene(0, "train", i).subjects:
            assert not placed.identity.held_out
    for i in range(50):
        for placed in sample_scene(0, "heldout", i).subjects:
            assert placed.identity.held_out
    for _, phrase, identity in held_out_subjects(6):
        assert is_held_out(identity.primary, identity.secondary) and phrase in CLASSES
    for sample in toy_samples(0, per_group=5):
        colours = [c for _, ident, _ in sample["subjects"] for c in ident.colors]
        assert len(set(colours)) == len(colours)  # disjoint colours within a sample
        for _, ident, *_ in sample["subjects"] + sample["distractors"]:
            assert ident.held_out
        assert len(sample["subjects"]) + len(sample["distractors"]) == CANDIDATES


def test_reference_is_another_frame_of_the_same_subject():
    scene = sample_scene(0, "train", 2)
    subject = scene.subjects[0]
    ref = sample_reference(subject, 0, 7, avoid_background=scene.background)
    assert ref.scene.background != scene.background
    assert ref.scene.subjects[0].identity == subject.identity
    assert ref.scene.subjects[0].cls == subject.cls
    crop = ref.crop()
    # the crop is the subject: its colours dominate the crop's subject-coloured pixels
    hist = colour_histogram(classify_pixels(crop))
    names = list(SUBJECT_COLORS)
    top = {names[k] for k in np.argsort(hist)[-2:]}
    assert top == set(subject.identity.colors)


def _scene_image(sample: dict, *, swap: bool = False, empty: bool = False) -> Image.Image:
    subjects = sample["subjects"]
    identities = [ident for _, ident, _ in subjects]
    if swap:
        identities = identities[1:] + identities[:1]
    placed = (
        ()
        if empty
        else tuple(
            Placed(cls, ident, box)
            for (cls, _, box), ident in zip(subjects, identities, strict=True)
        )
    )
    image, _ = render(Scene(sample["background"], placed, texture_seed=1))
    return image


def test_toy_metrics_known_answers():
    sample = next(s for s in toy_samples(0, per_group=3) if len(s["subjects"]) == 2)
    refs = [
        colour_histogram(
            classify_pixels(render(Scene("snow", (Placed(c, i, (0.2, 0.2, 0.8, 0.8)),), 3))[0])
        )
        for c, i, _ in sample["subjects"] + [(c, i, None) for c, i in sample["distractors"]]
    ]
    boxes = [b for *_, b in sample["subjects"]]

    def scores(image):
        labels = classify_pixels(image)
        return [
            identity_score(colour_histogram(labels, b), refs, k) for k, b in enumerate(boxes)
        ], labels

    perfect, labels = scores(_scene_image(sample))
    assert perfect == [1.0, 1.0]
    for _, ident, box in sample["subjects"]:
        assert layout_share(labels, ident.colors, box) > 0.97
    assert background_of(labels, boxes) == sample["background"]
    swapped, _ = scores(_scene_image(sample, swap=True))
    assert swapped == [0.0, 0.0]
    empty, labels = scores(_scene_image(sample, empty=True))
    assert empty == [1.0 / CANDIDATES] * 2  # nothing drawn: a tie with every candidate = chance
    assert layout_share(labels, sample["subjects"][0][1].colors, boxes[0]) == 0.0
    other = next(b for b in BACKGROUNDS if b != sample["background"])
    plain = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[other])
    assert background_of(classify_pixels(plain), boxes) == other


@pytest.fixture(scope="module")
def toy_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("toybench")
    write_toy_benchmark(root, per_group=2)
    return root


def test_toy_benchmark_in_the_harness(toy_bench, tmp_path):
    from msdiffusion.benchmarks import load_benchmark
    from msdiffusion.evaluation.runs import resolve_run
    from msdiffusion.evaluation.scoring import ScoringConfig, score_run

    bench = load_benchmark("toy", toy_bench)
    assert [r["samples"] for r in bench.counts()] == [2, 2, 2, 6]
    assert not bench.missing
    spec = json.loads((toy_bench / "toy" / "spec.json").read_text())
    samples = toy_samples(spec["world_seed"], per_group=2)
    # bring-your-own images: perfect renders for image 0, subjects swapped for image 1
    for sample in samples:
        folder = tmp_path / "run" / "images" / sample["id"]
        folder.mkdir(parents=True)
        _scene_image(sample).save(folder / "0.png")
        _scene_image(
            sample, swap=len(sample["subjects"]) > 1, empty=len(sample["subjects"]) == 1
        ).save(folder / "1.png")
    inputs = resolve_run(tmp_path / "run", benchmark="toy", data=toy_bench)
    report = score_run(inputs, ScoringConfig(), progress=False)
    assert report["models"]["toy"]["candidates"] == CANDIDATES
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()
    ]
    by_image = {(r["sample_id"], r["index"]): r for r in rows}
    for sample in samples:
        good, bad = by_image[(sample["id"], 0)], by_image[(sample["id"], 1)]
        assert good["toy_identity"] == 1.0 and good["toy_background"] == 1.0
        assert good["toy_layout"] > 0.95
        if len(sample["subjects"]) > 1:
            assert bad["toy_identity"] == 0.0 and bad["toy_identity_all"] == 0.0
        else:
            assert bad["toy_identity"] == pytest.approx(1.0 / CANDIDATES)
    assert "Identity" in (tmp_path / "run" / "report.md").read_text()


def test_training_set_is_a_clean_manifest(tmp_path):
    from msdiffusion.manifest import scan_manifest
    from msdiffusion.toyworld.dataset import write_training_set

    manifest = write_training_set(tmp_path / "data", 12, workers=1, progress=False)
    scan = scan_manifest(manifest, check_files=True, decode=True)
    assert len(scan.records) == 12 and not scan.problems
    first = json.loads(manifest.read_text().splitlines()[0])
    assert first["caption"] == sample_scene(0, "train", 0).caption
    for subject in first["subjects"]:
        assert subject["reference_box"] is not None and not subject["augmented"]


def test_word_tokenizer_keeps_the_world_words_whole(tmp_path):
    from msdiffusion.testing.sdxl import ARCHITECTURES
    from msdiffusion.testing.tokenizers import char_tokenizer

    words = ARCHITECTURES["toy"].words
    tok = char_tokenizer(tmp_path / "tok", words)
    for word in words:
        assert len(tok(word).input_ids) == 3, word  # start, the word, end
    ids = tok("a ball, a star and a ring on sand").input_ids
    assert tok.convert_ids_to_tokens(ids)[-2] == "sand</w>"
    assert len(tok("a ballroom").input_ids) > 4  # unknown words still tokenise (characters)


def test_learn_command_refuses_bad_counts(capsys):
    from msdiffusion.toyworld.learn import main

    for flag in ("--jobs", "--threads"):
        with pytest.raises(SystemExit) as stop:
            main([flag, "0"])
        assert stop.value.code == 2
        assert f"{flag} must be >= 1 (got 0)" in capsys.readouterr().err
