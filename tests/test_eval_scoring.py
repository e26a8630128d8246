"""Scoring with tiny random CLIP / DINO / OWLv2 models loaded from folders: bring-your-own images,
per-image metric wiring, skipped files counted, reference cache, reports, compare, CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from msdiffusion.benchmarks import load_benchmark
from msdiffusion.cli import main
from msdiffusion.errors import InputError
from msdiffusion.evaluation.features import DinoEmbedder
from msdiffusion.evaluation.metrics import product_score
from msdiffusion.evaluation.report import compare_runs
from msdiffusion.evaluation.runs import resolve_run
from msdiffusion.evaluation.scoring import ScoringConfig, score_run
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
    assert saved["overall"]["dino_det"]["mean"] == pytest.approx(
        sum(r["dino_det"] for r in rows) / 6
    )
    md = (run / "report.md").read_text()
    assert scorers["dino"] in md and "| **all** | 6 |" in md and "M-DINO det" in md
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
    assert "tiny-scorers/clip" in out and "| **all** | 2 |" in out

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
    with pytest.raises(InputError, match="different models"):
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
