"""The build as a Ray Data program on a local Ray (2 CPUs): the same samples as one process,
a poisoned input isolated inside a model stage, rotation, near-duplicates, refilter, resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_data_helpers import (
    STANDARD_CAPTION,
    Shape,
    Shot,
    make_video,
    settings_for_tests,
    standard_shots,
    tiny_models_config,
)

from msdiffusion.data.build import build_dataset
from msdiffusion.data.config import BuildConfig
from msdiffusion.data.refilter import refilter_dataset
from msdiffusion.errors import InputError
from msdiffusion.shards import iter_samples, read_index

ray = pytest.importorskip("ray")

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def local_ray():
    """Ray on this machine: 2 CPUs, no dashboard, a small object store; workers can import the
    tests' model plug-ins. Shut down after the module."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=96 * 2**20,
        logging_level="WARNING",
        runtime_env={
            "env_vars": {
                "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1",
            }
        },
    )
    yield
    ray.shutdown()


def _settings(**sections) -> dict:
    models = {
        "captioner": None,
        "detector": {"kind": "test_data_helpers:poisoned_detector"},
        "segmenter": tiny_models_config()["segmenter"],
        "features": tiny_models_config(features="dinov2")["features"],
        "batch_size": 4,
    }
    # One actor pool holds the three models here (each stage's own pool, the default, is the
    # same code in more processes: test_ray_with_a_pool_per_stage_and_kill_minus_9, slow).
    base = {
        "shards": {"inputs_per_shard": 3},
        "faults": {"retries": 1},
        "models": models,
        "ray": {"inputs_per_block": 6, "fuse_model_stages": True},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return settings_for_tests(**base)


@pytest.fixture(scope="module")
def cfg() -> BuildConfig:
    return BuildConfig.from_dict(_settings())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """clip (3 shots), a byte copy of it (near-duplicates), a rotated phone-style video, one
    whose first shot shows magenta (the detector raises on it), a tiny and an empty file."""
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "clip.mp4", standard_shots())
    shutil.copyfile(root / "clip.mp4", root / "copy.mp4")
    make_video(root / "phone.mp4", standard_shots()[:1], rotation=90)
    make_video(
        root / "poison.mp4",
        [
            Shot(
                2.0,
                (90, 90, 100),
                (
                    Shape("magenta", "square", (40, 50), (120, 60), 30, 44),
                    Shape("red", "square", (150, 40), (100, 90), 30, 30),
                ),
            ),
            Shot(2.0, (60, 120, 60), (Shape("red", "circle", (30, 70), (160, 60), 36, 44),)),
        ],
    )
    for name in ("clip", "copy", "phone", "poison"):
        (root / f"{name}.txt").write_text(STANDARD_CAPTION + " and a red circle")
    make_video(root / "tiny.mp4", standard_shots()[:1], size=(96, 48))
    (root / "zero.mov").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def built(local_ray, videos, cfg, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("built")
    ray_run = build_dataset(videos, out / "ray", mode="videos", cfg=cfg, progress=False)
    local_run = build_dataset(
        videos, out / "local", mode="videos", cfg=cfg, engine="local", progress=False
    )
    assert ray.is_initialized()  # a Ray it did not start is left running
    return ray_run.index.parent, local_run.index.parent


def _tars(dataset: Path) -> dict[str, bytes]:
    return {
        p.relative_to(dataset).as_posix(): p.read_bytes() for p in sorted(dataset.glob("*/*.tar"))
    }


def test_ray_build_equals_the_single_process_build(built):
    ray_ds, local_ds = built
    assert _tars(ray_ds) == _tars(local_ds) and len(_tars(ray_ds)) == 4  # 6 inputs / 3
    assert read_index(ray_ds).data == read_index(local_ds).data
    ray_report = json.loads((ray_ds / "report.json").read_text())
    local_report = json.loads((local_ds / "report.json").read_text())
    for key in ("funnel", "skipped", "converted", "histograms", "model_images", "failed"):
        assert ray_report[key] == local_report[key], key


def test_a_poisoned_input_in_a_model_stage_is_retried_then_listed(built):
    ray_ds, _ = built
    failed = [json.loads(line) for line in (ray_ds / "failed.jsonl").read_text().splitlines()]
    assert failed == [
        {
            "input": "poison.mp4",
            "index": 0,
            "stage": "detect",
            "reason": failed[0]["reason"],
            "attempts": 2,
        }
    ]  # batch + 1 retry alone
    assert failed[0]["reason"].startswith("ValueError: poisoned frame")
    report = json.loads((ray_ds / "report.json").read_text())
    assert report["failed_inputs"] == 1 and report["skipped"]["failed:detect"] == 1
    sources = {
        (s.record["meta"]["source"], s.record["meta"]["shot"])
        for s in iter_samples(read_index(ray_ds).paths())
    }
    # the rest of the batch it came in, and its own second shot, went through
    assert {("poison.mp4", 1), ("clip.mp4", 0), ("clip.mp4", 1), ("phone.mp4", 0)} <= sources
    assert "Failed inputs (1" in (ray_ds / "report.md").read_text()


def test_rotation_small_videos_and_near_duplicates(built):
    ray_ds, _ = built
    samples = {
        (s.record["meta"]["source"], s.record["meta"]["shot"]): s
        for s in iter_samples(read_index(ray_ds).paths())
    }
    phone = samples[("phone.mp4", 0)]
    assert phone.open(phone.record["image"]).size == (144, 192)  # shown upright: portrait
    red = next(s for s in phone.record["subjects"] if s["phrase"] == "red square")
    # shot 0's red square starts top-left in the stored frame: turned 90° counter-clockwise it
    # is at the bottom left of the shown one
    x0, y0, x1, y1 = red["box"]
    assert x0 < 0.5 and y0 > 0.3
    report = json.loads((ray_ds / "report.json").read_text())
    assert report["converted"]["video_rotated"] == 1
    assert report["skipped"]["file:too_small"] == 1  # tiny.mp4 (96×48), not "unreadable"
    assert "file:unreadable" not in report["skipped"]
    # copy.mp4 is clip.mp4 again: its targets are near-duplicates of clip's (input order)
    assert report["skipped"]["sample:near_duplicate_target"] == 2
    assert not any(source == "copy.mp4" for source, _ in samples)


def test_refilter_reapplies_thresholds_without_models(built, cfg, tmp_path):
    ray_ds, _ = built
    same = refilter_dataset(ray_ds, tmp_path / "same", cfg)  # on the running Ray
    shards = {k: v for k, v in _tars(ray_ds).items() if k.startswith("shards/")}
    assert _tars(tmp_path / "same") == shards  # the same thresholds: the same shards
    strict = BuildConfig.from_dict(
        _settings(filters={"max_subjects": 1}, dedup={"max_distance": -1})
    )
    out = refilter_dataset(ray_ds, tmp_path / "strict", strict, engine="local")
    records = [s.record for s in iter_samples(read_index(out.index).paths())]
    assert records and all(len(r["subjects"]) == 1 for r in records)
    assert any(r["meta"]["source"] == "copy.mp4" for r in records)  # dedup off
    assert out.report["skipped"]["detection:over_max_subjects"] > 0
    assert out.report["funnel"][0] == same.report["funnel"][0]  # files: from the build
    assert out.report["failed_inputs"] == 1  # the build's failure is still listed
    assert read_index(out.index).data["raw_dataset"]
    with pytest.raises(InputError, match=r"config\.video\.min_gap_s: refilter can only change"):
        refilter_dataset(
            ray_ds,
            tmp_path / "x",
            BuildConfig.from_dict(_settings(video={"min_gap_s": 1.5})),
            engine="local",
        )


@pytest.mark.slow
def test_ray_with_a_pool_per_stage_and_kill_minus_9(local_ray, videos, tmp_path, started_build):
    """The default layout (an actor pool per model stage) in a build process of its own, with
    its own local Ray, killed with SIGKILL after its first shard; the resumed build's shards
    are those of the uninterrupted one."""
    import signal

    psutil = pytest.importorskip("psutil")

    settings = _settings(
        ray={"fuse_model_stages": False, "inputs_per_block": 1}, shards={"inputs_per_shard": 1}
    )
    settings["models"]["detector"] = {
        "kind": "test_data_helpers:slow_colour_detector",
        "options": {"delay": 1.0},
    }
    config = tmp_path / "data.json"
    config.write_text(json.dumps(settings))
    out = tmp_path / "ds"
    proc = started_build(videos, out, config, "--num-cpus", "2", timeout=300)
    marker = out / "shards" / "shard-000000.json"
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:  # the driver and the Ray it started: a machine dying, in effect
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert marker.exists() and not (out / "index.json").exists()
    cfg = BuildConfig.from_dict(settings)
    resumed = build_dataset(videos, out, mode="videos", cfg=cfg, progress=False)
    assert resumed.shards_done_before >= 1 and resumed.index is not None
    fresh = build_dataset(videos, tmp_path / "fresh", mode="videos", cfg=cfg, progress=False)
    assert _tars(out) == _tars(fresh.index.parent)


def test_a_model_that_fails_to_load_in_a_worker_is_one_error_and_leaves_nothing(
    local_ray, videos, tmp_path
):
    from msdiffusion.errors import MSDiffusionError

    settings = _settings()
    settings["models"]["detector"] = {"kind": "test_data_helpers:unloadable_detector"}
    out = tmp_path / "ds"
    with pytest.raises(MSDiffusionError, match="cannot load the detector model"):
        build_dataset(
            videos, out, mode="videos", cfg=BuildConfig.from_dict(settings), progress=False
        )
    assert not out.exists()  # build.json and inputs.json are taken back
