"""Scoring with tiny random CLIP / DINO / OWLv2 models loaded from folders: bring-your-own images,
per-image metric wiring, skipped files counted, reference cache, reports, compare, CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msdiffusion.benchmarks import load_benchmark
from msdiffusion.cli import main
from msdiffusion.errors import InputError
from msdiffusion.evaluation.compare import compare_runs
from msdiffusion.evaluation.features import (
    Detection,
    DinoEmbedder,
    ReferenceCache,
    resize_center_crop,
)
from msdiffusion.evaluation.metrics import product_score
from msdiffusion.evaluation.runs import resolve_run
from msdiffusion.evaluation.scoring import (
    ScoringConfig,
    ScoringModels,
    score_images,
    score_run,
)
from msdiffusion.geometry import box_to_pixels
from msdiffusion.testing.scorers import write_tiny_scorers

pytestmark = pytest.mark.usefixtures("single_thread")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def scorers(tmp_path_factory) -> dict[str, str]:
    return write_tiny_scorers(tmp_path_factory.mktemp("scorers"))


def _config(scorers, **kw) -> ScoringConfig:
    settings = dict(
        clip_model=scorers["clip"],
        dino_model=scorers["dino"],
        detector_model=scorers["detector"],
        batch_size=8,
        chunk_images=4,
    )
    return ScoringConfig(**{**settings, **kw})


def _byo_run(root: Path, bench, samples, images_per_sample=2, size=(120, 80)) -> Path:
    """Another method's outputs: references pasted into their boxes on a non-square canvas."""
    for s in samples:
        for k in range(images_per_sample):
            canvas = Image.new("RGB", size, (40 * k, 90, 140))
            for sub in s.subjects:
                x0, y0, x1, y1 = box_to_pixels(sub.box, *size)
                with Image.open(bench.path(sub.image)) as ref:
                    canvas.paste(ref.convert("RGB").resize((x1 - x0, y1 - y0)), (x0, y0))
            path = root / "images" / s.id / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            canvas.save(path)
    return root


def test_bring_your_own_images_scored_and_reported(tmp_path, data_root, scorers):
    bench = load_benchmark("msbench", data_root)
    two_dogs = bench.get("living_living/dog2+dog5/0")  # two subjects share a phrase
    samples = [s for s in bench.select(limit=2) if s.id != two_dogs.id] + [two_dogs]
    run = _byo_run(tmp_path / "theirs", bench, samples)
    with pytest.raises(InputError, match="--benchmark"):
        resolve_run(run)
    report = score_run(
        resolve_run(run, benchmark="msbench", data=data_root), _config(scorers), progress=False
    )
    assert report["counts"]["images_scored"] == 6 and report["run"]["kind"] == "external"
    assert report["counts"]["samples_expected"] == len(bench.runnable)
    assert report["models"]["clip"]["model"] == scorers["clip"]
    assert set(report["groups"]) == {s.group for s in samples}

    rows = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        subs = row["subjects"]
        assert row["m_dino_box"] == pytest.approx(product_score([s["dino_box"] for s in subs]))
        assert row["m_dino_det"] == pytest.approx(product_score([s["dino_det"] for s in subs]))
        assert row["layout_iou"] == pytest.approx(sum(s["iou"] for s in subs) / len(subs))
        assert row["dino_det"] == pytest.approx(sum(s["dino_det"] for s in subs) / len(subs))
        for key in ("clip_t", "clip_i", "dino", "clip_i_box", "clip_i_det"):
            assert -1.0 <= row[key] <= 1.0
        if row["sample_id"] == two_dogs.id:  # one phrase, two subjects: two distinct boxes
            assert subs[0]["det_box"] != subs[1]["det_box"]

    saved = json.loads((run / "report.json").read_text())
    assert saved["overall"]["clip_t"]["n"] == 6
    # overall: the groups' means weighted by their share of the full benchmark
    weights = saved["weighting"]["weights"]
    assert saved["weighting"]["subset"] and sum(weights.values()) == pytest.approx(1.0)
    by_group = {g: [r["dino_det"] for r in rows if r["group"] == g] for g in saved["groups"]}
    present = sum(weights[g] for g in by_group)
    assert saved["overall"]["dino_det"]["mean"] == pytest.approx(
        sum(weights[g] * sum(v) / len(v) for g, v in by_group.items()) / present
    )
    assert saved["groups"]["living_living"]["metrics"]["dino_det"]["mean"] == pytest.approx(
        sum(by_group["living_living"]) / len(by_group["living_living"])
    )
    md = (run / "report.md").read_text()
    assert scorers["dino"] in md and "| **all** (weighted) | 3 | 6 |" in md and "M-DINO" in md
    for summary in saved["overall"].values():  # every metric with its interval
        if summary["n"]:
            assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    assert set(saved["breakdowns"]["subjects"]) == {str(len(s.subjects)) for s in samples}
    assert set(saved["breakdowns"]["category"]) == {
        sub.category for s in samples for sub in s.subjects
    }
    assert saved["breakdowns"]["subject"]["dog2"]["metrics"]["dino_det"]["samples"] == 1
    assert [w["metric"] for w in saved["worst"]] == ["m_dino_det"] * 3
    assert [w["value"] for w in saved["worst"]] == sorted(w["value"] for w in saved["worst"])
    assert "## Worst samples by M-DINO" in md and "### By category" in md
    assert Image.open(run / "worst.png").size[0] > 256
    for metric in ("clip_t", "dino_det", "m_dino_box", "layout_iou"):
        assert Image.open(run / "charts" / f"{metric}.png").size[0] > 100
    assert Image.open(run / "grid.png").size[0] > 256


def test_an_exact_copy_of_the_reference_scores_one(tmp_path, data_root, scorers):
    bench = load_benchmark("dreambench", data_root, references="first")
    samples = bench.select(limit=2)
    for s in samples:
        path = tmp_path / "copy" / "images" / s.id / "0.png"
        path.parent.mkdir(parents=True)
        Image.open(bench.path(s.subjects[0].image)).convert("RGB").save(path)
    inputs = resolve_run(
        tmp_path / "copy", benchmark="dreambench", data=data_root, references="first"
    )
    report = score_run(inputs, _config(scorers), progress=False)
    assert report["overall"]["clip_i"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert report["overall"]["dino"]["mean"] == pytest.approx(1.0, abs=1e-5)
    pct = score_run(inputs, _config(scorers, percent=True, clip_t_weight=2.5), progress=False)
    assert pct["overall"]["dino"]["mean"] == pytest.approx(100.0, abs=1e-3)
    raw = [
        json.loads(line)["clip_t"]
        for line in (tmp_path / "copy" / "scores.jsonl").read_text().splitlines()
    ]  # stays raw
    assert pct["overall"]["clip_t"]["mean"] == pytest.approx(
        sum(250 * max(c, 0.0) for c in raw) / len(raw)
    )


def test_missing_corrupt_and_foreign_images_are_counted_or_refused(tmp_path, data_root, scorers):
    bench = load_benchmark("msbench", data_root)
    s1, s2, s3 = bench.select(limit=3)
    run = _byo_run(tmp_path / "r", bench, [s1, s2], images_per_sample=1)
    cut = run / "images" / s2.id / "0.png"
    cut.write_bytes(cut.read_bytes()[:200])
    index = [
        {"sample_id": s1.id, "image": str(run / "images" / s1.id / "0.png")},
        {"sample_id": s2.id, "image": f"images/{s2.id}/0.png"},
        {"sample_id": s3.id, "image": "images/absent.png"},
    ]
    (run / "list.json").write_text(json.dumps(index))
    inputs = resolve_run(run, benchmark="msbench", data=data_root, index=run / "list.json")
    report = score_run(inputs, _config(scorers, detector_model=None), progress=False)
    assert report["counts"]["images_scored"] == 1
    assert report["counts"]["skipped"] == {"missing": 1, "corrupt": 1, "no_reference": 0}
    assert report["overall"]["dino"]["n"] == 1 and report["overall"]["layout_iou"]["n"] == 0
    assert "1 missing, 1 corrupt" in (run / "report.md").read_text()

    (run / "foreign.jsonl").write_text(json.dumps({"sample_id": "live/dog/3", "image": "x.png"}))
    with pytest.raises(InputError, match="another benchmark"):
        resolve_run(run, benchmark="msbench", data=data_root, index=run / "foreign.jsonl")


def test_reference_features_are_cached_by_content(tmp_path, data_root, scorers):
    bench = load_benchmark("msbench", data_root)
    run = _byo_run(tmp_path / "r", bench, bench.select(limit=2), images_per_sample=1)
    inputs = resolve_run(run, benchmark="msbench", data=data_root)
    config = _config(scorers, detector_model=None, cache_dir=str(tmp_path / "cache"))
    first = score_run(inputs, config, progress=False)
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert [f.name.split("-")[0] for f in files] == ["clip", "dino"]
    stamps = [f.stat().st_mtime_ns for f in files]
    second = score_run(inputs, config, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing recomputed
    assert second["overall"]["dino"] == first["overall"]["dino"]
    from safetensors.torch import load_file

    cached = load_file(str(files[1]))
    ref = bench.path(bench.select(limit=1)[0].subjects[0].image)
    fresh = DinoEmbedder(scorers["dino"]).embed_images([Image.open(ref)])[0]
    assert any(
        math.isclose(float((v - fresh).abs().max()), 0.0, abs_tol=1e-6) for v in cached.values()
    )


def test_compare_and_cli(tmp_path, data_root, scorers, capsys):
    bench = load_benchmark("msbench", data_root)
    a = _byo_run(tmp_path / "ours", bench, bench.select(limit=4), images_per_sample=1)
    b = _byo_run(tmp_path / "theirs", bench, bench.select(limit=2), images_per_sample=1)
    common = [
        "--benchmark",
        "msbench",
        "--data",
        str(data_root),
        "--models",
        "tiny",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main(["eval", "score", str(a), *common]) == 0
    assert main(["eval", "score", str(b), *common]) == 0
    out = capsys.readouterr().out
    assert "tiny-scorers/clip" in out and "| **all** (weighted) | 2 | 2 |" in out

    result = compare_runs([a, b], out=tmp_path / "cmp")
    assert result["common_samples"] == 2
    assert [t["images"] for t in result["runs"].values()] == [2, 2]
    assert (tmp_path / "cmp" / "compare.md").read_text().count("| ours |") >= 1
    assert Image.open(tmp_path / "cmp" / "charts" / "dino_det.png").size[0] > 100
    everything = compare_runs([a, b], common_only=False)
    assert [t["images"] for t in everything["runs"].values()] == [4, 2]
    assert main(["eval", "compare", str(a), str(b), "--names", "ours,theirs"]) == 0
    assert "| theirs |" in capsys.readouterr().out

    score_run(
        resolve_run(b, benchmark="msbench", data=data_root),
        _config(scorers, detector_model=None),
        progress=False,
    )  # other detector: none
    with pytest.raises(InputError, match="scored differently"):
        compare_runs([a, b])
    assert compare_runs([a, b], allow_different_models=True)["common_samples"] == 2

    assert main(["eval", "score", str(tmp_path / "nope")]) == 2
    assert (
        main(
            [
                "eval",
                "score",
                str(a),
                "--benchmark",
                "msbench",
                "--data",
                str(data_root),
                "--clip-model",
                str(tmp_path / "no-model"),
            ]
        )
        == 2
    )
    assert "--clip-model" in capsys.readouterr().err
    assert main(["eval", "compare", str(a)]) == 2
    assert main(["eval", "list", "coco", "--data", str(data_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("msdiffusion: error: benchmark: must be one of")


@pytest.mark.slow
def test_default_models_find_a_pasted_subject(tmp_path, data_root):
    """With the real default models (downloads ~1.3 GB): a subject's photo pasted into its box
    is detected there, and its box crop resembles the reference."""
    bench = load_benchmark("dreambench", data_root, references="first")
    samples = bench.select(groups=["live"], limit=2)
    run = _byo_run(tmp_path / "pasted", bench, samples, images_per_sample=1, size=(768, 512))
    inputs = resolve_run(run, benchmark="dreambench", data=data_root, references="first")
    report = score_run(inputs, ScoringConfig(), progress=False)
    assert report["models"]["detector"]["model"] == "google/owlv2-base-patch16-ensemble"
    for line in (run / "scores.jsonl").read_text().splitlines():
        (sub,) = json.loads(line)["subjects"]
        x0, y0, x1, y1 = sub["det_box"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2  # the detection's centre lies in the requested box
        assert sub["box"][0] < cx < sub["box"][2] and sub["box"][1] < cy < sub["box"][3]
        assert sub["dino_box"] > 0.7


def _paste(canvas: Image.Image, bench, sub) -> None:
    x0, y0, x1, y1 = box_to_pixels(sub.box, *canvas.size)
    with Image.open(bench.path(sub.image)) as ref:
        canvas.paste(ref.convert("RGB").resize((x1 - x0, y1 - y0)), (x0, y0))


def test_a_missing_subject_gives_m_dino_zero(data_root, scorers):
    """Constructed images and detections with known answers: both subjects pasted in their
    boxes and found there, versus the second subject absent (its best detection scores 0.02)."""
    bench = load_benchmark("msbench", data_root)
    sample = (
        bench.get("living_object/dog2+clock/3")
        or bench.select(groups=["living_object"], limit=1)[0]
    )
    first, second = sample.subjects
    complete, missing = (Image.new("RGB", (128, 128), (90, 120, 150)) for _ in range(2))
    for sub in (first, second):
        _paste(complete, bench, sub)
    _paste(missing, bench, first)
    models = ScoringModels(_config(scorers))
    refs = {
        name: {
            r: feats[0]
            for r in [s.image for s in sample.subjects]
            for feats in [embedder.embed_images([Image.open(bench.path(r))])]
        }
        for name, embedder in (("clip", models.clip), ("dino", models.dino))
    }
    prompt_feats = {sample.prompt: models.clip.embed_texts([sample.prompt])[0]}
    found = [
        [Detection(first.box, 0.9), Detection(second.box, 0.8)],
        [Detection(first.box, 0.9), Detection((0.0, 0.0, 0.2, 0.2), 0.02)],
    ]
    both, one = score_images(
        models, [sample, sample], [complete, missing], refs, prompt_feats, 0.1, detections=found
    )
    assert both["detection_rate"] == 1.0 and both["layout_iou"] == pytest.approx(1.0)
    assert (
        both["m_dino_det"]
        == pytest.approx(product_score([s["dino_det"] for s in both["subjects"]]))
        and both["m_dino_det"] > 0
    )
    assert one["m_dino_det"] == 0.0  # the missing subject counts as 0: the product is 0
    assert one["detection_rate"] == 0.5 and one["layout_iou"] == pytest.approx(0.5)
    kept, lost = one["subjects"]
    assert kept["detected"] and not lost["detected"] and lost["dino_det"] == 0.0
    assert lost["dino_det_crop"] != 0.0 and lost["det_iou"] == 0.0  # raw values kept
    assert one["dino_det"] == pytest.approx(kept["dino_det"] / 2)
    assert kept["dino_det"] == pytest.approx(both["subjects"][0]["dino_det"], abs=1e-5)
    counted, _ = score_images(
        models,
        [sample, sample],
        [missing, missing],
        refs,
        prompt_feats,
        0.0,
        detections=[found[1], found[1]],
    )
    assert counted["m_dino_det"] == pytest.approx(
        product_score([s["dino_det_crop"] for s in one["subjects"]])
    )  # threshold 0: as before


def test_detection_threshold_end_to_end(tmp_path, data_root, scorers):
    bench = load_benchmark("msbench", data_root)
    run = _byo_run(tmp_path / "r", bench, bench.select(limit=4), images_per_sample=1)
    inputs = resolve_run(run, benchmark="msbench", data=data_root)
    lenient = score_run(inputs, _config(scorers, detection_threshold=0.0), progress=False)
    assert lenient["detection"]["rate"] == 1.0 and lenient["overall"]["m_dino_det"]["mean"] > 0
    rows = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    scores = sorted(s["det_score"] for r in rows for s in r["subjects"])
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # half missing
    strict = score_run(inputs, _config(scorers, detection_threshold=threshold), progress=False)
    missing = sum(score < threshold for score in scores)
    assert strict["detection"]["missing"] == missing > 0
    assert strict["detection"]["subjects"] == len(scores)
    assert strict["detection"]["rate"] == pytest.approx(1 - missing / len(scores))
    for row in (json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()):
        lost = [s["det_score"] < threshold for s in row["subjects"]]
        assert (row["m_dino_det"] == 0.0) == any(lost)
        assert row["detection_rate"] == pytest.approx(1 - sum(lost) / len(lost))
    assert strict["protocol"]["deviations"]["scoring"]["detection_threshold"] == {
        "protocol": 0.1,
        "run": threshold,
    }
    assert f"**{missing} missing**" in (run / "report.md").read_text()


def test_dino_preprocessing_is_resize_256_bicubic_then_centre_crop(tmp_path, scorers):
    wide = Image.new("RGB", (512, 256))
    wide.paste((200, 30, 30), (0, 0, 144, 256))  # the part the crop must cut off
    wide.paste((30, 200, 30), (144, 16, 368, 240))  # exactly the centre 224²
    crop = resize_center_crop(wide, 256, 224)  # the short side is already 256: no resampling
    assert crop.size == (224, 224) and crop.getcolors() == [(224 * 224, (30, 200, 30))]
    tall = resize_center_crop(Image.new("RGB", (300, 600)), 256, 224)
    assert tall.size == (224, 224)

    dino = DinoEmbedder(scorers["dino"])  # tiny: input 32, so short side round(32·256/224)=37
    assert dino.preprocessing["resize_short_side"] == 37
    assert dino.preprocessing["center_crop"] == 32 and dino.preprocessing["resample"] == "bicubic"
    photo = Image.radial_gradient("L").convert("RGB").resize((80, 40))
    mean = torch.tensor(dino.processor.image_mean)[:, None, None]
    std = torch.tensor(dino.processor.image_std)[:, None, None]
    expected = (
        torch.from_numpy(np.asarray(resize_center_crop(photo, 37, 32), np.float32)).permute(2, 0, 1)
        / 255
        - mean
    ) / std
    assert torch.allclose(dino.pixels([photo])[0], expected, atol=1e-6)
    squash = DinoEmbedder(scorers["dino"], preprocessing="processor")
    assert squash.preprocessing["mode"] == "processor"
    assert not torch.allclose(squash.pixels([photo]), dino.pixels([photo]))
    assert squash.weights == dino.weights and squash.fingerprint != dino.fingerprint
    cache = ReferenceCache(tmp_path / "cache")
    ref = tmp_path / "ref.png"
    photo.save(ref)
    a = cache.embed(dino, [ref], lambda p: Image.open(p).convert("RGB"))[ref]
    b = cache.embed(squash, [ref], lambda p: Image.open(p).convert("RGB"))[ref]
    assert len(list((tmp_path / "cache").glob("dino-*.safetensors"))) == 2  # keyed apart
    assert not torch.allclose(a, b)


def test_compare_two_tiny_scored_runs(tmp_path, data_root, capsys):
    """The documented offline flow: each run scored with --models tiny (its own copy of the tiny
    scorers in RUN/cache): the scorers match by weights, not by path."""
    bench = load_benchmark("msbench", data_root)
    samples = bench.select(limit=6)
    a = _byo_run(tmp_path / "ours", bench, samples, images_per_sample=2)
    b = _byo_run(tmp_path / "theirs", bench, samples, images_per_sample=2, size=(96, 96))
    for run in (a, b):
        assert (
            main(
                [
                    "eval",
                    "score",
                    str(run),
                    "--benchmark",
                    "msbench",
                    "--data",
                    str(data_root),
                    "--models",
                    "tiny",
                    "--no-progress",
                ]
            )
            == 0
        )
    reports = [json.loads((r / "report.json").read_text()) for r in (a, b)]
    assert reports[0]["models"]["dino"]["model"] != reports[1]["models"]["dino"]["model"]
    assert reports[0]["models"]["dino"]["identity"] == reports[1]["models"]["dino"]["identity"]
    capsys.readouterr()
    assert main(["eval", "compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    md = capsys.readouterr().out
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["common_samples"] == 6 and result["baseline"] == "ours"
    diff = result["differences"]["theirs"]["m_dino_det"]
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"] and 0 < diff["p_value"] <= 1
    ours = result["runs"]["ours"]["overall"]["m_dino_det"]["mean"]
    theirs = result["runs"]["theirs"]["overall"]["m_dino_det"]["mean"]
    assert diff["mean"] == pytest.approx(theirs - ours)
    assert "## Differences from ours" in md and "p=" in md
    assert "*MS-Diffusion, paper (reported)*" in md and "*0.108*" in md
    assert "not reproduced here" in md
    assert result["reference"] == {
        "clip_i": 0.698,
        "dino": 0.425,
        "m_dino_det": 0.108,
        "clip_t": 0.341,
    }
    assert (
        result["subtitles"]["dino"].startswith("ours: ")
        and "theirs: " in result["subtitles"]["dino"]
    )  # each run's own copy, named
    assert Image.open(tmp_path / "cmp" / "charts" / "m_dino_det.png").size[0] > 100
    percent = compare_runs([a, b], percent=True, reference=True)
    assert percent["reference"]["dino"] == pytest.approx(42.5)

    assert (
        main(
            [
                "eval",
                "score",
                str(b),
                "--benchmark",
                "msbench",
                "--data",
                str(data_root),
                "--models",
                "tiny",
                "--dino-preprocessing",
                "processor",
                "--no-progress",
            ]
        )
        == 0
    )
    with pytest.raises(InputError, match=r"dino \(preprocessing, weights_sha256\)|dino \("):
        compare_runs([a, b])
    assert compare_runs([a, b], allow_different_models=True)["scorers_differ"]
