"""Benchmark enumeration: exact MS-Bench / DreamBench counts, missing references, bad input.

Runs on the project's shared data (``<repo>/../shared/data``) when present, otherwise on stand-in
data built from the packaged spec — so a fresh clone checks the same counts.
"""

from __future__ import annotations

import json
import os

import pytest

from msdiffusion.benchmarks import (
    DREAMBENCH_DEFAULT_BOX,
    load_benchmark,
    load_msbench_spec,
    parse_dreambench_prompts,
)
from msdiffusion.errors import InputError
from msdiffusion.evaluation.standin import write_standin

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (combinations, samples) per combination type, computed by hand from the paper's categories:
# living 10, object 10, scene 4, upwearing 5, midwearing 6, downwearing 3, wholewearing 2.
MSBENCH_EXPECTED = {
    "living_living": (45, 270),
    "living_object": (100, 600),
    "object_object": (45, 270),
    "living_upwearing": (50, 300),
    "living_midwearing": (60, 360),
    "living_wholewearing": (20, 120),
    "midwearing_downwearing": (18, 108),
    "living_scene": (40, 40),
    "object_scene": (40, 40),
    "living_living_living": (120, 720),
    "object_object_object": (120, 720),
    "living_object_scene": (400, 400),
    "upwearing_midwearing_downwearing": (90, 540),
}


@pytest.fixture(scope="module")
def msbench(data_root):
    return load_benchmark("msbench", data_root)


@pytest.fixture(scope="module")
def dreambench(data_root):
    return load_benchmark("dreambench", data_root)


def _counts(bench):
    return {r["group"]: (r["combinations"], r["samples"]) for r in bench.counts()}


def test_msbench_enumerates_1148_combinations_and_4488_samples(msbench):
    counts = _counts(msbench)
    assert counts.pop("total") == (1148, 4488)
    assert counts == MSBENCH_EXPECTED
    assert len({s.id for s in msbench.samples}) == 4488
    assert all(s.id.startswith(f"{s.combination}/") for s in msbench.samples)


def test_msbench_missing_reference_skips_only_affected_samples(msbench):
    assert msbench.missing == ["living/cat1.jpg"]
    with_cat1 = {s.id for s in msbench.samples if any(x.name == "cat1" for x in s.subjects)}
    assert set(msbench.skipped) == with_cat1
    # cat1 pairs with 9 other living subjects; triples: C(9, 2); objects 10; wearings 5+6+2;
    # scenes 4; living_object_scene 10 * 4.
    assert len(with_cat1) == 9 * 6 + 36 * 6 + 10 * 6 + 13 * 6 + 4 + 40 == 452
    assert len(msbench.runnable) == 4488 - 452
    line = msbench.missing_report()
    assert "living/cat1.jpg" in line and "452 of 4488" in line


def test_msbench_prompts_boxes_and_phrases_follow_the_spec(msbench):
    spec, _ = load_msbench_spec()
    s = msbench.get("living_object/dog2+clock/3")
    assert s.prompt == "a dog and a clock on the beach"
    assert [x.box for x in s.subjects] == [(0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75)]
    assert [x.image for x in s.subjects] == ["living/dog2.jpg", "object/clock.jpg"]
    s = msbench.get("upwearing_midwearing_downwearing/hat1+t-shirt+shorts1/0")
    assert s.prompt == "a woman wearing a hat, a t-shirt, and a shorts in a room"
    s = msbench.get("living_object_scene/dog+teddybear+forest/0")
    assert s.prompt == "a dog and stuffed animal with a forest in the background"
    assert s.subjects[2].box == (0.0, 0.0, 1.0, 1.0)
    for sample in msbench.samples:  # phrases are class names; subjects keep category order
        ctype = spec["combination_types"][sample.group]
        for sub, cat in zip(sample.subjects, ctype["categories"], strict=True):
            assert sub.name in spec["categories"][cat]
            assert sub.phrase == spec["classes"][sub.name]


def test_dreambench_750_zero_shot_prompts_with_one_conditioning_reference(dreambench):
    counts = _counts(dreambench)
    assert counts["total"] == (30, 750)
    assert counts["live"] == (9, 225) and counts["object"] == (21, 525)
    for s in dreambench.samples:
        (sub,) = s.subjects
        assert s.prompt.startswith(f"a {sub.phrase}") or f" {sub.phrase}" in s.prompt
        assert "{" not in s.prompt and "  " not in s.prompt
        assert sub.box == DREAMBENCH_DEFAULT_BOX
        assert sub.image == sub.references[0] and sub.image.endswith("/00.jpg")
        assert len(sub.references) >= 4  # all of the subject's images are compared with
    first = load_benchmark(
        "dreambench", dreambench.data_dir, references="first", box=(0.1, 0.1, 0.9, 0.9)
    )
    assert all(len(s.subjects[0].references) == 1 for s in first.samples)
    assert first.samples[0].subjects[0].box == (0.1, 0.1, 0.9, 0.9)


def test_dreambench_parser_reads_the_published_format():
    text = "\n".join(
        [
            "Classes",
            "",
            "subject_name,class",
            "backpack,backpack",
            "dog,dog",
            "",
            "Prompts",
            "",
            "Object Prompts",
            "",
            "prompt_list = [",
            "'a {0} {1} in the jungle'.format(unique_token, class_token),",
            "'a red {0} {1}'.format(unique_token, class_token)",
            "]",
            "",
            "Live Subject Prompts",
            "",
            "prompt_list = [",
            "'a {0} {1} wearing a red hat'.format(unique_token, class_token),",
            "]",
        ]
    )
    classes, objects, live = parse_dreambench_prompts(text)
    assert classes == {"backpack": "backpack", "dog": "dog"}
    assert objects == ["a {0} {1} in the jungle", "a red {0} {1}"]
    assert live == ["a {0} {1} wearing a red hat"]


def test_select_limit_covers_every_group_round_robin(msbench):
    chosen = msbench.select(limit=13)
    assert sorted(s.group for s in chosen) == sorted(MSBENCH_EXPECTED)
    bigger = msbench.select(limit=100)
    assert {s.id for s in chosen} <= {s.id for s in bigger}  # nested: resuming keeps images
    assert len({s.combination for s in bigger}) > 60  # spread over combinations, not the first
    assert all(s.id not in msbench.skipped for s in msbench.select(limit=200))
    only = msbench.select(groups=["object_scene"], limit=5)
    assert [s.group for s in only] == ["object_scene"] * 5
    with pytest.raises(InputError, match="groups"):
        msbench.select(groups=["nope"])
    with pytest.raises(InputError, match="limit"):
        msbench.select(limit=0)


def test_standin_has_the_real_counts(tmp_path):
    root = write_standin(tmp_path, benchmarks=("msbench", "dreambench"))
    assert _counts(load_benchmark("MS-Bench", root))["total"] == (1148, 4488)
    assert _counts(load_benchmark("dreambooth", root / "dreambench"))["total"] == (30, 750)
    complete = write_standin(tmp_path / "full", benchmarks=("msbench",), missing=())
    assert load_benchmark("msbench", complete).missing == []


def test_bad_input_gives_clear_errors(tmp_path, data_root):
    with pytest.raises(InputError, match="benchmark: must be one of"):
        load_benchmark("coco", data_root)
    with pytest.raises(InputError, match="existing folder"):
        load_benchmark("msbench", tmp_path / "absent")
    with pytest.raises(InputError, match="does not look like msbench"):
        load_benchmark("msbench", data_root / "dreambench")
    with pytest.raises(InputError, match="box"):
        load_benchmark("msbench", data_root, box=(0, 0, 1, 1))
    with pytest.raises(InputError, match="box"):
        load_benchmark("dreambench", data_root, box=(0.5, 0, 0.2, 1))
    spec, _ = load_msbench_spec()
    spec["expected"]["samples"] = 4487
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="enumerates 1148 combinations / 4488 samples"):
        load_benchmark("msbench", data_root, spec=tmp_path / "spec.json")
    spec["expected"]["samples"] = 4488
    spec["combination_types"]["living_living"]["boxes"][0] = [0.6, 0.2, 0.5, 0.7]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="living_living: box"):
        load_benchmark("msbench", data_root, spec=tmp_path / "spec.json")
    bad = tmp_path / "db"
    bad.mkdir()
    (bad / "prompts_and_classes.txt").write_text("Classes\n\nsubject_name,class\ndog,dog\n")
    with pytest.raises(InputError, match="must list 30 subjects"):
        load_benchmark("dreambench", bad)


def test_missing_dreambench_subject_is_reported(tmp_path):
    root = write_standin(tmp_path, benchmarks=("dreambench",)) / "dreambench"
    for f in (root / "dog").iterdir():
        f.unlink()
    bench = load_benchmark("dreambench", root)
    assert bench.missing == ["dog/00.jpg"]
    assert len(bench.skipped) == 25 and all("/dog/" in i for i in bench.skipped)
    assert len(bench.runnable) == 725
