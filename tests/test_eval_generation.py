"""Benchmark generation with the tiny preset: index, resume, truncated files redone, refusal to
mix settings, and two CPU processes under ``accelerate launch`` taking disjoint, complete slices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from msdiffusion.benchmarks import load_benchmark
from msdiffusion.errors import InputError
from msdiffusion.evaluation.generate import GenerationConfig, run_generation
from msdiffusion.evaluation.runs import RunFolder
from msdiffusion.loading import load_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
TINY = dict(steps=1, height=64, width=64)


@pytest.fixture(autouse=True, scope="module")
def _reset_accelerate_state():
    yield
    from accelerate.state import PartialState

    PartialState._reset_state()  # leave no process state behind for other test files


def test_generate_index_resume_and_truncated_file(tmp_path, data_root):
    bench = load_benchmark("msbench", data_root)
    samples = bench.select(limit=2)
    out = tmp_path / "run"
    config = GenerationConfig(images_per_sample=2, **TINY)
    stats = run_generation(bench, out, config, samples=samples, progress=False)
    assert (stats["generated"], stats["already_done"]) == (4, 0)
    model = load_pipeline("tiny", device="cpu")  # the same model, loaded once for the reruns

    run = RunFolder(out)
    records = run.read_index()
    assert [(r.sample_id, r.index) for r in records] == [(s.id, k) for s in samples for k in (0, 1)]
    for r in records:  # the index records prompt, subjects, boxes and seed of every image
        sample = bench.get(r.sample_id)
        assert r.prompt == sample.prompt and r.group == sample.group
        assert [tuple(s["box"]) for s in r.subjects] == [s.box for s in sample.subjects]
        assert [s["phrase"] for s in r.subjects] == [s.phrase for s in sample.subjects]
        sidecar = json.loads((out / r.image).with_suffix(".json").read_text())
        assert sidecar["seed"] == r.seed and sidecar["request"]["prompt"] == r.prompt
        assert sidecar["sample_id"] == r.sample_id and sidecar["image"] == Path(r.image).name
        assert Image.open(out / r.image).size == (64, 64)
    assert records[1].seed == records[0].seed + 1
    summary = json.loads((out / "generation.json").read_text())
    assert summary["complete"] and summary["done"] == 4 and summary["images_per_s"] > 0
    assert not (out / ".staging").exists()
    meta = json.loads((out / "run.json").read_text())  # the protocol and every deviation
    assert meta["protocol"] == {
        "name": "paper",
        "deviations": {
            "steps": {"protocol": 30, "run": 1},
            "height": {"protocol": 1024, "run": 64},
            "width": {"protocol": 1024, "run": 64},
            "images_per_sample": {"protocol": 5, "run": 2},
        },
    }
    assert meta["generation"]["negative_prompt"].startswith("monochrome, lowres")

    # Resume: finished images are kept as they are.
    mtimes = {r.image: (out / r.image).stat().st_mtime_ns for r in records}
    stats = run_generation(bench, out, config, samples=samples, progress=False, model=model)
    assert (stats["generated"], stats["already_done"]) == (0, 4)
    assert mtimes == {r.image: (out / r.image).stat().st_mtime_ns for r in records}

    # A truncated image and an image without its sidecar are made again — identically.
    cut, orphan = out / records[1].image, out / records[2].image
    original = cut.read_bytes()
    cut.write_bytes(original[: len(original) // 2])
    orphan.with_suffix(".json").unlink()
    stats = run_generation(bench, out, config, samples=samples, progress=False, model=model)
    assert stats["generated"] == 2 and sorted(stats["images"]) == sorted(
        [records[1].image, records[2].image]
    )
    assert cut.read_bytes() == original

    # More images per sample extends the run; other settings or benchmarks are refused.
    more = GenerationConfig(images_per_sample=3, **TINY)
    assert (
        run_generation(bench, out, more, samples=samples, progress=False, model=model)["generated"]
        == 2
    )
    with pytest.raises(InputError, match="other settings"):
        run_generation(
            bench,
            out,
            GenerationConfig(images_per_sample=2, steps=2, height=64, width=64),
            samples=samples,
            progress=False,
        )
    with pytest.raises(InputError, match="measured against the paper protocol"):
        run_generation(
            bench, out, config, samples=samples, progress=False, model=model, protocol="mip-adapter"
        )
    with pytest.raises(InputError, match="holds a msbench run"):
        dream = load_benchmark("dreambench", data_root)
        run_generation(dream, out, config, samples=dream.select(limit=1), progress=False)


def test_two_cpu_processes_take_disjoint_complete_slices(tmp_path, data_root):
    out = tmp_path / "run"
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": "29617",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29617",
        "-m",
        "msdiffusion.cli",
        "eval",
        "generate",
        "dreambench",
        "--data",
        str(data_root),
        "--out",
        str(out),
        "--limit",
        "3",
        "--images-per-sample",
        "2",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--height",
        "64",
        "--width",
        "64",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = [json.loads((out / "progress" / f"process-{i}.json").read_text()) for i in (0, 1)]
    assert [(p["process"], p["processes"]) for p in parts] == [(0, 2), (1, 2)]
    mine = [set(p["images"]) for p in parts]
    planned = {r.image for r in RunFolder(out).read_index()}
    assert len(planned) == 6 and mine[0] and mine[1]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == planned
    summary = json.loads((out / "generation.json").read_text())
    assert summary["complete"] and summary["processes"] == 2
    assert "6/6 images done" in proc.stdout


def test_ablation_switches_reach_the_request(tmp_path):
    from msdiffusion.benchmarks import Benchmark, BenchSample, BenchSubject
    from msdiffusion.evaluation.generate import GenerationConfig, build_request

    Image.new("RGB", (8, 8)).save(tmp_path / "ref.png")
    subject = BenchSubject("ball-red-blue", "ball", (0.1, 0.2, 0.5, 0.6), "ref.png", ("ref.png",))
    sample = BenchSample("g/c/0", "g", "g/c", "a ball on sand", (subject,))
    bench = Benchmark("toy", tmp_path, [sample], [])
    plain = build_request(sample, bench, GenerationConfig(), seed=3)
    assert plain.subjects[0].mask is None and not plain.drop_grounding_tokens
    ablated = build_request(
        sample,
        bench,
        GenerationConfig(region="image", height=64, width=96, drop_grounding_tokens=True),
        seed=3,
    )
    mask = ablated.subjects[0].mask
    assert mask.size == (96, 64) and mask.getextrema() == (255, 255)  # the whole output
    assert ablated.subjects[0].box == subject.box  # still embedded in the grounding tokens
    assert ablated.drop_grounding_tokens
    with pytest.raises(InputError, match="region"):
        GenerationConfig(region="boxes")
