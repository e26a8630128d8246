"""Resuming under faults: damaged checkpoints, missing random states, rollbacks, signals, kills,
hyper-parameters changed on resume, and shard streams — each ends bit-exact with an
uninterrupted run, or with a clear refusal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msdiffusion.errors import CheckpointError, InputError
from msdiffusion.training.checkpoint import STATE_NAME, CheckpointManager
from msdiffusion.training.config import load_config
from msdiffusion.training.demo import build_demo_manifest, demo_shards
from msdiffusion.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("single_thread", "fresh_accelerate_state")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "subjects"


class Killed(BaseException):
    """Stands for the process dying mid-run (nothing may catch it)."""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """The demo set, record 0 with a 1-pixel box that every crop empties."""
    path = build_demo_manifest(
        tmp_path_factory.mktemp("demo"), EXAMPLES if EXAMPLES.is_dir() else None, num_records=10
    )
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[0]["subjects"][0]["box"] = [0.0, 0.0, 0.01, 0.01]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def config(out: Path, data: Path, **overrides):
    base = {
        "model.preset": "tiny",
        "data.manifest": str(data),
        "data.resolution": 64,
        "data.num_workers": 0,
        "data.crop": "random",
        "batch_size": 2,
        "max_steps": 6,
        "output_dir": str(out),
        "checkpoint.every": 2,
        "logging.every": 1,
        "logging.report_to": "none",
    }
    return load_config(None, {**base, **overrides})


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter.safetensors"))


def same(a: Path, b: Path) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def state_of(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_NAME).read_text())


@pytest.fixture(scope="module")
def run6(tmp_path_factory, manifest):
    """6 uninterrupted steps, checkpoints at 2, 4, 6."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    out = tmp_path_factory.mktemp("run6")
    result = train(config(out, manifest))
    return out, result


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    shutil.rmtree(to / "adapter")
    return to


def test_emptied_boxes_are_kept_and_counted(run6):
    out, result = run6
    state = state_of(out / "checkpoints" / "step-00000006")
    assert state["boxes_emptied"] >= 1 and result.samples_skipped == 0  # kept, not skipped
    logged = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["boxes_emptied"] == state["boxes_emptied"]
    assert set(state["files"]) >= {"optimizer.bin", "random_states_0.pkl", "scheduler.bin"}


def test_a_damaged_latest_is_set_aside_and_the_one_before_used(tmp_path, run6, manifest, caplog):
    run, result = run6
    out = copy_run(run, tmp_path / "run")
    (out / "checkpoints" / "step-00000006" / "optimizer.bin").write_bytes(b"")  # truncated
    resumed = train(config(out, manifest, resume="latest"))
    assert "step-00000006 is damaged (optimizer.bin has 0 bytes" in caplog.text
    assert resumed.step == 6 and same(resumed.adapter_dir, result.adapter_dir)
    assert (out / "checkpoints" / "abandoned" / "step-00000006-damaged").is_dir()
    assert state_of(out / "checkpoints" / "step-00000006")["parent"].endswith("step-00000004")
    # a changed byte (same size) fails its checksum; a damaged checkpoint named is an error
    file = out / "checkpoints" / "step-00000004" / "adapter" / "adapter.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    problems = CheckpointManager.verify(file.parents[1])
    assert problems == ["adapter/adapter.safetensors does not match its SHA-256"]
    named = config(out, manifest, resume=str(file.parents[1]))
    with pytest.raises(CheckpointError, match="step-00000004 is damaged: adapter/adapter"):
        Trainer(named).run()


def test_missing_random_states_are_an_error_unless_allowed(tmp_path, run6, manifest):
    """A checkpoint whose state lists no checksums (written before they were recorded) and lacks
    a process's random state cannot continue exactly."""
    out = copy_run(run6[0], tmp_path / "run")
    last = out / "checkpoints" / "step-00000006"
    state = state_of(last)
    del state["files"], state["data"], state["extra"]["config"]["allow_inexact_resume"]
    (last / STATE_NAME).write_text(json.dumps(state))
    (last / "random_states_0.pkl").unlink()
    cfg = config(out, manifest, resume="latest", max_steps=7)
    with pytest.raises(InputError, match="random_states_0.pkl missing.*--allow-inexact-resume"):
        Trainer(cfg).run()
    result = train(cfg.with_overrides({"allow_inexact_resume": True}))
    assert result.step == 7
    resumes = state_of(out / "checkpoints" / "step-00000007")["resumes"]
    assert "random_states_0.pkl missing" in resumes[-1]["inexact"][0]


def test_a_rollback_starts_a_lineage_that_latest_and_pruning_follow(tmp_path, run6, manifest):
    run, result = run6
    out = copy_run(run, tmp_path / "run")
    ckpts = out / "checkpoints"
    kept = []

    def killed_at_3(trainer, state):
        if state.step == 3:
            raise Killed

    rollback = config(out, manifest, resume=str(ckpts / "step-00000002"), **{"checkpoint.keep": 2})
    with pytest.raises(Killed):
        Trainer(rollback, callbacks=[killed_at_3]).run()
    assert [p.name for p in ckpts.glob("step-*")] == ["step-00000002"]
    assert sorted(p.name for p in (ckpts / "abandoned").iterdir()) == [
        "step-00000004-abandoned",
        "step-00000006-abandoned",
    ]

    def watch(trainer, state):
        kept.append(sorted(p.name for p in ckpts.glob("step-*")))

    resumed = Trainer(rollback.with_overrides({"resume": "latest"}), callbacks=[watch]).run()
    assert kept[2] == ["step-00000002", "step-00000004"]  # at step 5: the start survives pruning
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000004", "step-00000006"]
    assert same(resumed.adapter_dir, result.adapter_dir)  # the replayed branch is the same


def test_hyperparameters_given_on_resume_take_effect(tmp_path, run6, manifest):
    out = copy_run(run6[0], tmp_path / "run")
    changed = {
        "resume": "latest",
        "max_steps": 8,
        "optim.learning_rate": 1e-5,
        "optim.weight_decay": 0.05,
        "optim.adam_beta1": 0.8,
        "optim.lr_scheduler": "linear",
    }
    steps = []

    def record(trainer, state):
        group = trainer.optimizer.param_groups[0]
        steps.append((state.step, group["lr"], group["weight_decay"], group["betas"][0]))

    Trainer(config(out, manifest, **changed), callbacks=[record]).run()
    assert steps == [(7, 1e-5 * 1 / 8, 0.05, 0.8), (8, 0.0, 0.05, 0.8)]  # linear decay to 8
    logged = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in logged if x["step"] > 6] == [1e-5 / 8, 0.0]
    assert json.loads((out / "config.json").read_text())["optim"]["learning_rate"] == 1e-5
    resume = state_of(out / "checkpoints" / "step-00000008")["resumes"][-1]
    assert resume["step"] == 6 and resume["changes"]["optim.learning_rate"] == [1e-4, 1e-5]
    with pytest.raises(InputError, match="seed 0 → 1: the rest of the run's data order"):
        Trainer(config(out, manifest, resume="latest", max_steps=9, seed=1)).run()


def test_sigterm_checkpoints_at_the_next_step_boundary(tmp_path, run6, manifest):
    run, result = run6

    def signal_at_2(trainer, state):
        if state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    stopped = Trainer(config(tmp_path, manifest), callbacks=[signal_at_2]).run()
    assert stopped.stopped_by == "SIGTERM" and stopped.step == 3 and stopped.adapter_dir is None
    assert stopped.checkpoint.name == "step-00000003" and not (tmp_path / "adapter").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is gone again
    resumed = train(config(tmp_path, manifest, resume="latest"))
    assert same(resumed.adapter_dir, result.adapter_dir)


def test_shard_streams_resume_at_their_exact_positions(tmp_path, manifest):
    shards = demo_shards(manifest, tmp_path / "shards", samples_per_shard=4)
    common = {"data.num_workers": 2, "data.shuffle_buffer": 3, "checkpoint.every": 3}
    straight = train(config(tmp_path / "straight", shards, **common))

    def crash_at_4(trainer, state):
        if state.step == 4:
            raise Killed

    with pytest.raises(Killed):
        Trainer(config(tmp_path / "crashed", shards, **common), callbacks=[crash_at_4]).run()
    state = state_of(tmp_path / "crashed" / "checkpoints" / "step-00000003")
    assert sorted(state["stream"]["positions"]) == ["0", "1"]  # one per worker
    assert state["data"]["kind"] == "shards" and state["data"]["samples"] == 10
    resumed = train(config(tmp_path / "crashed", shards, resume="latest", **common))
    assert same(resumed.adapter_dir, straight.adapter_dir)
    fewer = {"data.shuffle_buffer": 3, "resume": "latest", "max_steps": 7}  # 0 workers: 1 stream
    fewer = config(tmp_path / "crashed", shards, **fewer)
    with pytest.raises(InputError, match="the shard streams differ \\(workers\\)"):
        Trainer(fewer).run()


CLI = [sys.executable, "-m", "msdiffusion.cli", "train"]


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int) -> None:
    metrics = out / "logs" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file():
            lines = metrics.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in time: {proc.communicate()[1][-2000:]}")


def test_the_cli_survives_sigterm_and_kill_minus_9(tmp_path, manifest):
    """SIGTERM: a checkpoint at the step boundary, exit 0; SIGKILL: the last checkpoint stands;
    resuming after both ends where an uninterrupted run does."""
    out = tmp_path / "run"
    cfg = config(out, manifest, max_steps=1000, **{"checkpoint.every": 2, "data.num_workers": 1})
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [*CLI, "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _wait_for_step(out, proc, 2)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, DataLoader worker included
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert b"stopped by SIGTERM" in stdout and not (out / "adapter").exists()
    first = CheckpointManager(out / "checkpoints").latest()
    proc = subprocess.Popen(
        [*CLI, "--config", str(path), "--resume", "latest"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for_step(out, proc, state_of(first)["step"] + 3)
    proc.kill()
    proc.communicate()
    latest = CheckpointManager(out / "checkpoints").latest()
    last = state_of(latest)["step"]
    assert last > state_of(first)["step"] and CheckpointManager.verify(latest) == []
    resumed = train(cfg.with_overrides({"resume": "latest", "max_steps": last + 1}))
    straight = {"max_steps": last + 1, "data.num_workers": 1}
    straight = train(config(tmp_path / "straight", manifest, **straight))
    assert same(resumed.adapter_dir, straight.adapter_dir)
