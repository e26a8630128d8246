"""Data pipeline end to end in one process: video builds, shards, the CLI, kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_data_helpers import (
    STALL_WHEN,
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
from msdiffusion.shards import iter_samples, read_index

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


def records(dataset: Path) -> list[dict]:
    return [s.record for s in iter_samples(read_index(dataset).paths())]


CFG = BuildConfig.from_dict(settings_for_tests(shards={"inputs_per_shard": 2}))


@pytest.fixture(scope="module")
def clean(videos, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "ds"
    return build_dataset(
        videos, out, mode="videos", cfg=CFG, engine="local", models=models, progress=False
    )


def test_video_build_pairs_subjects_across_frames(clean):
    dataset = clean.index.parent
    found = {(r["meta"]["source"], r["meta"]["shot"]): r for r in records(dataset)}
    assert set(found) == {("clip.mp4", 0), ("clip.mp4", 1), ("more/walk.mp4", 0)}
    first = found[("clip.mp4", 0)]
    assert first["caption"] == STANDARD_CAPTION
    assert [s["phrase"] for s in first["subjects"]] == ["red square", "blue circle"]
    # the boxes are where the shapes are at the target time (shot 0 is 2 s: u = t / 1.9)
    t = first["meta"]["target_time"]
    for s, shape in zip(first["subjects"], standard_shots()[0].shapes, strict=True):
        x0, y0, x1, y1 = shape.box(t / 1.9)
        assert s["box"] == pytest.approx((x0 / 192, y0 / 144, x1 / 192, y1 / 144), abs=0.03)
    for record in found.values():
        meta = record["meta"]
        for s, sm in zip(record["subjects"], meta["subjects"], strict=True):
            assert abs(sm["reference_time"] - meta["target_time"]) >= CFG.video.min_gap_s
            assert meta["shot_start"] <= sm["reference_time"] < meta["shot_end"]  # same shot
            assert s["augmented"] is False and s["reference"].startswith("ref")
    # the static green square is a near-duplicate in every frame: never a subject
    assert [s["phrase"] for s in found[("clip.mp4", 1)]["subjects"]] == ["yellow square"]
    report, index = clean.report, read_index(dataset)
    skipped = report["skipped"]
    assert skipped["subject:near_duplicate"] == 1
    assert skipped["frame:dark"] >= 5  # shot 2 of clip.mp4 is dark...
    assert skipped["shot:no_frame_pair_at_min_gap"] == 2  # ...and walk.mp4's shot 1 is 1 s long
    assert skipped["file:unreadable"] == 1 and skipped["file:empty"] == 1
    funnel = {row["stage"]: row["count"] for row in report["funnel"]}
    assert funnel["files"] == 4 and funnel["files_ok"] == 2 and funnel["samples"] == 3
    assert funnel["shots"] == 5 and funnel["subjects"] == 4
    # 4 inputs, 2 per shard: 2 shards, counted in the index; raw records for every target
    assert [s["samples"] for s in index.shards] == [2, 1] and index.samples == 3
    assert all((dataset / s["raw"]).is_file() for s in index.shards)
    assert index.config_fingerprint == CFG.fingerprint()
    assert "| frame:dark |" in (dataset / "report.md").read_text()
    assert (dataset / "report_grid.png").stat().st_size > 1000
    assert (dataset / "failed.jsonl").read_text() == ""


def test_shards_pass_data_check_and_export_to_a_manifest(clean, tmp_path, capsys):
    from msdiffusion.manifest import scan_manifest

    dataset = clean.index.parent
    assert main(["data", "check", str(dataset)]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["data", "check", str(dataset / "shards" / "shard-000001.tar"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] == 1
    assert main(["data", "export", str(dataset), "--out", str(tmp_path / "m")]) == 0
    scan = scan_manifest(tmp_path / "m" / "manifest.jsonl", open_images=True, decode=True)
    assert scan.problems == [] and len(scan.records) == 3
    assert main(["data", "export", str(dataset), "--out", str(tmp_path / "m")]) == 2  # not empty
    assert "exists and is not empty" in capsys.readouterr().err


def test_resume_refuses_other_settings_and_changed_inputs(videos, models, clean, tmp_path):
    dataset = clean.index.parent
    again = build_dataset(
        videos, dataset, mode="videos", cfg=CFG, engine="local", models=None, progress=False
    )  # finished: re-finishes without any model
    assert again.shards_written == 0 and again.report["samples"] == 3
    with pytest.raises(InputError, match="--out: this dataset was started with other settings"):
        build_dataset(
            videos,
            dataset,
            mode="videos",
            cfg=BuildConfig.from_dict(settings_for_tests(seed=1, shards={"inputs_per_shard": 2})),
            engine="local",
            models=models,
            progress=False,
        )
    with pytest.raises(InputError, match="--out: exists and is not a dataset folder"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("mine")
        build_dataset(
            videos,
            tmp_path / "mine",
            mode="videos",
            cfg=CFG,
            engine="local",
            models=models,
            progress=False,
        )


def _slow_settings() -> dict:
    """The test settings with a detector plug-in that sleeps, so a kill lands mid-build."""
    return settings_for_tests(
        shards={"inputs_per_shard": 1},
        models={
            "captioner": None,
            "segmenter": None,
            "features": tiny_models_config()["features"],
            "detector": {
                "kind": "test_data_helpers:slow_colour_detector",
                "options": {"delay": 0.15},
            },
        },
        ray={"inputs_per_block": 1},  # a block goes through every stage at once: one at a time
    )


def test_kill_minus_9_then_resume_gives_the_same_shards(videos, tmp_path, started_build):
    """A build process killed with SIGKILL after its first shard, then resumed, writes the same
    bytes as one uninterrupted build (local engine here; test_data_ray does it on Ray)."""
    cfg_file = tmp_path / "data.json"
    cfg_file.write_text(json.dumps(_slow_settings()))
    out = tmp_path / "ds"
    marker = out / "shards" / "shard-000000.json"
    # the killed build stops for good after its first shard: the kill finds it mid-build however
    # busy the machine is (the resumed and the fresh build run here, at full speed)
    proc = started_build(videos, out, cfg_file, "--engine", "local", env={STALL_WHEN: str(marker)})
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), (tmp_path / "build.log").read_text()[-2000:]
    assert not (out / "index.json").exists()  # nothing half-written looks complete
    done = sorted(p.name for p in (out / "shards").glob("shard-*.json"))
    assert len(done) < 4, "the kill came too late to interrupt anything"
    cfg = BuildConfig.from_dict(_slow_settings())
    resumed = build_dataset(videos, out, mode="videos", cfg=cfg, engine="local", progress=False)
    assert resumed.shards_done_before == len(done) and resumed.index is not None
    fresh = build_dataset(
        videos, tmp_path / "fresh", mode="videos", cfg=cfg, engine="local", progress=False
    )
    for kind in ("shards", "raw"):
        names = sorted(p.name for p in (out / kind).glob("*.tar"))
        assert names == sorted(p.name for p in (tmp_path / "fresh" / kind).glob("*.tar"))
        for name in names:
            assert (out / kind / name).read_bytes() == (
                tmp_path / "fresh" / kind / name
            ).read_bytes(), name
    assert resumed.report["funnel"] == fresh.report["funnel"]
    assert not list(out.rglob(".*.tmp"))


def test_cli_builds_with_tiny_real_models_and_the_shards_train(tmp_path, capsys):
    """`msdiffusion data build` with the tiny real captioner, Grounding DINO, SAM and DINOv2
    loaded from disk; then `data check`, export and a two-step training run on the result."""
    videos = tmp_path / "videos"  # square: training's centre crop keeps every (random) box
    make_video(videos / "a.mp4", standard_shots()[:1], size=(192, 192))
    make_video(videos / "b.mp4", standard_shots()[1:2], size=(192, 192))
    # Random weights find random boxes: keep every box that is not degenerate.
    settings = settings_for_tests(
        raw={"min_score": 0.0},
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
            "--engine",
            "local",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 1 shards" in printed and "report:" in printed
    found = records(out)
    assert found, "the tiny models should yield samples with these permissive filters"
    assert all(r["meta"]["caption_source"] == "model" for r in found)
    assert main(["data", "check", str(out)]) == 0
    # bad arguments are one line on stderr and exit code 2
    assert main(["data", "build", "--videos", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "--videos: must be an existing folder" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "build",
                "--videos",
                str(videos),
                "--out",
                str(tmp_path / "x"),
                "--num-cpus",
                "0",
            ]
        )
        == 2
    )

    pytest.importorskip(
        "msdiffusion.training.trainer", reason="training engine not available in this checkout"
    )
    assert main(["data", "export", str(out), "--out", str(tmp_path / "m")]) == 0
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--manifest",
            str(tmp_path / "m" / "manifest.jsonl"),
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
    # and straight from the shards, streamed
    shards_run = tmp_path / "shards-run"
    args = ["train", "--preset", "tiny", "--manifest", str(out), "--output-dir", str(shards_run)]
    args += ["--max-steps", "2", "--batch-size", "2", "--resolution", "64", "--num-workers", "0"]
    args += ["--cpu", "--set", "logging.report_to=none", "--set", "bad_data.max_skip_fraction=0.5"]
    assert main(args) == 0
    state = json.loads(
        (shards_run / "checkpoints" / "step-00000002" / "trainer_state.json").read_text()
    )
    assert state["data"]["kind"] == "shards" and state["stream"]["positions"]


def test_demo_builds_offline_with_random_models(tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path), "--videos", "1", "--engine", "local"]) == 0
    assert "next: msdiffusion data check" in capsys.readouterr().out
    found = records(tmp_path / "dataset")
    assert found and all(r["meta"]["source"] == "shapes_000.mp4" for r in found)
    assert main(["data", "config"]) == 0
    assert BuildConfig.from_dict(json.loads(capsys.readouterr().out)) == BuildConfig()


def test_a_build_shows_one_progress_bar_over_its_inputs(videos, models, tmp_path, capsys):
    build_dataset(
        videos,
        tmp_path / "ds",
        mode="videos",
        cfg=CFG,
        engine="local",
        models=models,
        progress=True,
    )
    err = capsys.readouterr().err
    assert "building" in err and "input" in err
    assert err.replace("\r", "\n").splitlines()[-1].startswith("building: 100%")
