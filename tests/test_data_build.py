"""Data pipeline end to end: video builds, resume, shards, the CLI, `data check`, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_helpers import (
    STANDARD_CAPTION,
    ColourDetector,
    Shape,
    Shot,
    make_video,
    settings_for_tests,
    standard_shots,
    tiny_models_config,
)

from msdiffusion.cli import main
from msdiffusion.data.build import build_dataset
from msdiffusion.data.config import BuildConfig
from msdiffusion.data.models import Models, load_models
from msdiffusion.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three videos: the standard one (3 shots), a second one, a broken one; sidecar captions."""
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "clip.mp4", standard_shots())
    (root / "clip.txt").write_text(STANDARD_CAPTION)
    make_video(
        root / "more" / "walk.mp4",
        [
            Shot(2.5, (60, 120, 60), (Shape("red", "circle", (30, 70), (160, 60), 36, 44),)),
            Shot(1.0, (60, 60, 120), (Shape("yellow", "square", (60, 60), (70, 70), 30, 30),)),
        ],
    )
    (root / "more" / "walk.txt").write_text("a red circle and a yellow square")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 3000)
    (root / "zero.mov").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def models() -> Models:
    cfg = BuildConfig.from_dict({"models": tiny_models_config()})
    loaded = load_models(cfg.models, "cpu")
    loaded.detector = ColourDetector()  # known boxes; the tiny real detectors run elsewhere
    return loaded


def _records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


CFG = BuildConfig.from_dict(settings_for_tests())


@pytest.fixture(scope="module")
def clean(videos, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "ds"
    return build_dataset(videos, out, mode="videos", cfg=CFG, models=models, progress=False)


def test_video_build_pairs_subjects_across_frames(clean):
    records = {(r["meta"]["source"], r["meta"]["shot"]): r for r in _records(clean.manifest)}
    assert set(records) == {("clip.mp4", 0), ("clip.mp4", 1), ("more/walk.mp4", 0)}
    first = records[("clip.mp4", 0)]
    assert first["caption"] == STANDARD_CAPTION
    assert [s["phrase"] for s in first["subjects"]] == ["red square", "blue circle"]
    # the boxes are where the shapes are at the target time (shot 0 is 2 s: u = t / 1.9)
    t = first["meta"]["target_time"]
    for s, shape in zip(first["subjects"], standard_shots()[0].shapes, strict=True):
        x0, y0, x1, y1 = shape.box(t / 1.9)
        want = (x0 / 192, y0 / 144, x1 / 192, y1 / 144)
        assert s["box"] == pytest.approx(want, abs=0.03), s["phrase"]
    root = clean.manifest.parent
    for record in records.values():
        meta = record["meta"]
        for s, sm in zip(record["subjects"], meta["subjects"], strict=True):
            gap = abs(sm["reference_time"] - meta["target_time"])
            assert gap >= CFG.video.min_gap_s  # the time-gap rule, from another frame
            assert meta["shot_start"] <= sm["reference_time"] < meta["shot_end"]  # same shot
            assert s["augmented"] is False and (root / s["reference"]).is_file()
    # the static green square is a near-duplicate in every frame: never a subject
    assert [s["phrase"] for s in records[("clip.mp4", 1)]["subjects"]] == ["yellow square"]
    report = clean.report
    skipped = report["skipped"]
    assert skipped["subject:near_duplicate"] == 1
    assert skipped["frame:dark"] >= 5  # shot 2 of clip.mp4 is dark...
    assert skipped["shot:no_frame_pair_at_min_gap"] == 2  # ...and walk.mp4's shot 1 is 1 s long
    assert skipped["file:unreadable"] == 1 and skipped["file:empty"] == 1
    funnel = {row["stage"]: row["count"] for row in report["funnel"]}
    assert funnel["files"] == 4 and funnel["files_ok"] == 2 and funnel["samples"] == 3
    assert funnel["shots"] == 5 and funnel["subjects"] == 4
    assert json.loads((root / "report.json").read_text())["samples"] == 3
    assert "| frame:dark |" in (root / "report.md").read_text()
    assert (root / "report_grid.png").stat().st_size > 1000


def test_manifest_passes_data_check(clean, capsys):
    from msdiffusion.manifest import scan_manifest

    scan = scan_manifest(clean.manifest, open_images=True, decode=True)
    assert scan.problems == [] and len(scan.records) == 3
    assert main(["data", "check", str(clean.manifest)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_resume_after_a_crash_equals_a_clean_run(videos, models, clean, tmp_path):
    out = tmp_path / "ds"

    class Crash(Exception):
        pass

    def crash_after_first(rel):
        raise Crash(rel)

    with pytest.raises(Crash):
        build_dataset(
            videos,
            out,
            mode="videos",
            cfg=CFG,
            models=models,
            progress=False,
            on_file_done=crash_after_first,
        )
    assert not (out / "manifest.jsonl").exists()  # nothing half-written looks complete
    assert len(list((out / "parts").glob("*.json"))) == 1
    # debris of a file that was in progress when the process died
    junk = out / "images" / "walk-0000" / "0000.png"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"half")
    resumed = build_dataset(videos, out, mode="videos", cfg=CFG, models=models, progress=False)
    assert (resumed.processed, resumed.already_done) == (3, 1)
    assert resumed.manifest.read_text() == clean.manifest.read_text()
    assert resumed.report["funnel"] == clean.report["funnel"]
    assert resumed.report["skipped"] == clean.report["skipped"]
    # a finished dataset re-merges without loading models or processing anything
    again = build_dataset(videos, out, mode="videos", cfg=CFG, models=None, progress=False)
    assert again.processed == 0 and again.manifest.read_text() == clean.manifest.read_text()
    # resuming with other settings is refused, naming the folder
    with pytest.raises(InputError, match="--out: this dataset was started with other settings"):
        build_dataset(
            videos,
            out,
            mode="videos",
            cfg=BuildConfig.from_dict(settings_for_tests(seed=1)),
            models=models,
            progress=False,
        )


def test_shards_merge_into_the_same_manifest(videos, models, clean, tmp_path):
    out = tmp_path / "ds"
    first = build_dataset(
        videos, out, mode="videos", cfg=CFG, models=models, shard=(0, 2), progress=False
    )
    assert first.manifest is None and first.processed == 2 and first.remaining == 2
    second = build_dataset(
        videos, out, mode="videos", cfg=CFG, models=models, shard=(1, 2), progress=False
    )
    assert second.processed == 2 and second.manifest.read_text() == clean.manifest.read_text()
    with pytest.raises(InputError, match="--shard"):
        build_dataset(videos, out, mode="videos", cfg=CFG, models=models, shard=(2, 2))


def test_cli_builds_with_tiny_real_models_and_the_manifest_trains(tmp_path, capsys):
    """`msdiffusion data build` with the tiny real captioner, Grounding DINO, SAM and DINOv2
    loaded from disk; then `data check` and a two-step training run on the result."""
    videos = tmp_path / "videos"  # square: training's centre crop keeps every (random) box
    make_video(videos / "a.mp4", standard_shots()[:1], size=(192, 192))
    make_video(videos / "b.mp4", standard_shots()[1:2], size=(192, 192))
    # Random weights find random boxes: keep every box that is not degenerate.
    settings = settings_for_tests(
        filters={
            "score_threshold": 0.0,
            "min_box_area": 0.0,
            "max_box_area": 1.0,
            "max_aspect": 100.0,
            "min_box_side": 4,
        },
        models=tiny_models_config(features="dinov2"),
    )
    config = tmp_path / "data.json"
    config.write_text(json.dumps(settings))
    out = tmp_path / "ds"
    code = main(
        [
            "data",
            "build",
            "--videos",
            str(videos),
            "--out",
            str(out),
            "--config",
            str(config),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "processed 2 files" in printed and "report:" in printed
    records = _records(out / "manifest.jsonl")
    assert records, "the tiny models should yield samples with these permissive filters"
    assert all(r["meta"]["caption_source"] == "model" for r in records)
    assert main(["data", "check", str(out / "manifest.jsonl")]) == 0
    # bad arguments are one line on stderr and exit code 2
    assert main(["data", "build", "--videos", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "--videos: must be an existing folder" in capsys.readouterr().err
    assert (
        main(
            ["data", "build", "--videos", str(videos), "--out", str(tmp_path / "x"), "--shard", "5"]
        )
        == 2
    )

    pytest.importorskip(
        "msdiffusion.training.trainer", reason="training engine not available in this checkout"
    )
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--manifest",
            str(out / "manifest.jsonl"),
            "--output-dir",
            str(run),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--resolution",
            "64",
            "--num-workers",
            "0",
            "--cpu",
            "--set",
            "logging.report_to=none",
            "--set",
            "checkpoint.every=0",
            "--set",
            "bad_data.max_skip_fraction=0.5",
        ]
    )
    assert code == 0
    assert any(run.rglob("*.safetensors")), "the run should export adapter weights"


def test_demo_builds_offline_with_random_models(tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path), "--videos", "1"]) == 0
    assert "next: msdiffusion data check" in capsys.readouterr().out
    records = _records(tmp_path / "dataset" / "manifest.jsonl")
    assert records and all(r["meta"]["source"] == "shapes_000.mp4" for r in records)
    assert main(["data", "config"]) == 0
    assert BuildConfig.from_dict(json.loads(capsys.readouterr().out)) == BuildConfig()
