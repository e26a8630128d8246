"""Protocols: what the paper protocol fixes, deviations recorded, protocols selectable by name,
the toy benchmark under its own."""

from __future__ import annotations

import pytest

from msdiffusion.cli import main
from msdiffusion.errors import InputError
from msdiffusion.evaluation.generate import GenerationConfig, recorded_deviations
from msdiffusion.evaluation.protocols import (
    PAPER_REPORTED,
    PROTOCOLS,
    default_protocol,
    get_protocol,
)
from msdiffusion.evaluation.scoring import ScoringConfig


def test_the_paper_protocol_fixes_every_setting_the_numbers_depend_on():
    paper = get_protocol("paper")
    assert paper.generation == {
        "negative_prompt": "monochrome, lowres, bad anatomy, worst quality, low quality",
        "steps": 30,
        "guidance_scale": 7.5,
        "scale": 0.6,
        "height": 1024,
        "width": 1024,
        "images_per_sample": 5,
        "seed": 0,
    }
    assert paper.scoring["clip_model"] == "openai/clip-vit-base-patch32"
    assert paper.scoring["dino_model"] == "facebook/dino-vits16"
    assert paper.scoring["dino_preprocessing"] == "resize-crop"
    assert paper.scoring["detection_threshold"] == 0.1
    assert set(paper.sources) >= set(paper.generation)  # every value says where it comes from
    # the library defaults are the paper protocol's
    assert GenerationConfig(preset="sdxl").deviations(paper) == {}
    assert ScoringConfig() == ScoringConfig.from_protocol("paper")
    assert default_protocol("msbench") == "paper" and default_protocol("toy") == "toy"
    assert PAPER_REPORTED["msbench"] == {
        "clip_i": 0.698,
        "dino": 0.425,
        "m_dino_det": 0.108,
        "clip_t": 0.341,
    }
    assert PAPER_REPORTED["dreambench"] == {"clip_i": 0.792, "dino": 0.671}


def test_deviations_are_every_setting_that_differs():
    paper = get_protocol("paper")
    demo = GenerationConfig.from_protocol(
        paper, preset="tiny", steps=4, images_per_sample=1, height=None
    )
    assert demo.negative_prompt == paper.generation["negative_prompt"] and demo.scale == 0.6
    assert demo.height == 1024  # None = not given: the protocol's
    native = GenerationConfig(preset="tiny", steps=4, images_per_sample=1)  # the preset's 256
    assert native.deviations(paper) == {
        "steps": {"protocol": 30, "run": 4},
        "height": {"protocol": 1024, "run": 256},
        "width": {"protocol": 1024, "run": 256},
        "images_per_sample": {"protocol": 5, "run": 1},
    }
    meta = {"generation": native.identity(), "images_per_sample": 1}
    assert recorded_deviations(meta, paper) == native.deviations(paper)
    toy = GenerationConfig.from_protocol("toy", preset="toy")
    assert (toy.height, toy.width, toy.guidance_scale, toy.scale, toy.steps) == (
        64,
        64,
        5.0,
        1.0,
        20,
    )
    assert toy.deviations(get_protocol("toy")) == {}
    mip = ScoringConfig.from_protocol("mip-adapter")
    assert mip.clip_t_weight == 2.5 and mip.detector_model is None
    assert ScoringConfig.from_protocol("paper", detection_threshold=0.3).detection_threshold == 0.3


def test_protocols_by_name_and_their_benchmarks(capsys):
    assert set(PROTOCOLS) == {"paper", "dreambench", "mip-adapter", "toy"}
    assert get_protocol("MIP_Adapter").name == "mip-adapter"
    with pytest.raises(InputError, match="must be one of"):
        get_protocol("cvpr")
    with pytest.raises(InputError, match="applies to toy"):
        get_protocol("toy").check("msbench")
    with pytest.raises(InputError, match="not toy"):
        get_protocol("paper").check("toy")
    assert main(["eval", "protocols"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PROTOCOLS)
    assert main(["eval", "protocols", "paper"]) == 0
    out = capsys.readouterr().out
    assert "monochrome, lowres" in out and "released generation code" in out
    assert main(["eval", "protocols", "nope"]) == 2
    with pytest.raises(InputError, match="detection_threshold"):
        ScoringConfig(detection_threshold=1.5)


def test_generate_refuses_a_protocol_of_another_benchmark(tmp_path, capsys):
    from msdiffusion.toyworld.bench import write_toy_benchmark

    write_toy_benchmark(tmp_path / "data", per_group=1)
    assert (
        main(
            [
                "eval",
                "generate",
                "toy",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "run"),
                "--protocol",
                "paper",
            ]
        )
        == 2
    )
    assert "protocol: paper applies to msbench, dreambench, not toy" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_toy_benchmark_is_scored_under_its_own_protocol_with_intervals(tmp_path):
    """Perfect renders for half the samples, subjects swapped for the others: the toy metrics
    get intervals and the per-subject-count and per-class tables, like the model metrics."""
    import json

    from msdiffusion.evaluation.runs import resolve_run
    from msdiffusion.evaluation.scoring import score_run
    from msdiffusion.toyworld.bench import toy_samples, write_toy_benchmark
    from msdiffusion.toyworld.world import Placed, Scene, render

    write_toy_benchmark(tmp_path / "data", per_group=4)
    spec = json.loads((tmp_path / "data" / "toy" / "spec.json").read_text())
    for n, sample in enumerate(toy_samples(spec["world_seed"], per_group=4)):
        idents = [ident for _, ident, _ in sample["subjects"]]
        if n % 2 and len(idents) > 1:
            idents = idents[1:] + idents[:1]  # every subject in another's box
        placed = tuple(
            Placed(c, i, b) for (c, _, b), i in zip(sample["subjects"], idents, strict=True)
        )
        path = tmp_path / "run" / "images" / sample["id"] / "0.png"
        path.parent.mkdir(parents=True)
        render(Scene(sample["background"], placed, texture_seed=1))[0].save(path)
    inputs = resolve_run(tmp_path / "run", benchmark="toy", data=tmp_path / "data")
    report = score_run(inputs, ScoringConfig(resamples=500), progress=False)
    assert report["protocol"]["name"] == "toy" and report["protocol"]["headline"][0] == (
        "toy_identity"
    )
    assert report["protocol"]["deviations"] == {"generation": None, "scoring": {}}
    ident = report["overall"]["toy_identity"]
    assert ident["samples"] == 12 and ident["ci_low"] < ident["mean"] < ident["ci_high"]
    three = report["breakdowns"]["subjects"]["3"]["metrics"]["toy_identity_all"]
    assert three["mean"] == pytest.approx(0.5) and three["samples"] == 4  # 2 right, 2 swapped
    one = report["breakdowns"]["subjects"]["1"]["metrics"]["toy_identity"]
    assert one["mean"] == 1.0 and one["ci_low"] == one["ci_high"] == 1.0
    classes = report["breakdowns"]["category"]
    assert classes and all("toy_identity" in c["metrics"] for c in classes.values())
    assert report["worst"][0]["metric"] == "toy_identity_all"
    assert report["worst"][0]["value"] == 0.0
    assert (tmp_path / "run" / "worst.png").is_file()
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Protocol **toy**" in md and "### By category" in md
