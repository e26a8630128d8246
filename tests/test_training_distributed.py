"""Two processes on the CPU (accelerate's MULTI_CPU mode over gloo).

One launch checks, in both processes: a manifest run (each process sees different samples, both
end with identical adapter weights — the ones exported); a shard-dataset run stopped by a signal
that only one process received (both stop at the same step, after one checkpoint) and resumed,
ending where an uninterrupted run ends; FSDP (torch's, over the same process group) wrapping only
the adapter, clipping by the global norm, and gathering the adapter's full weights. A second
launch shows that processes that do not form one run are refused; two processes started without
a launcher (as ``srun`` starts them) stop together on a signal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from msdiffusion.training.demo import build_demo_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "subjects"
REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import copy, json, os, signal, sys
from pathlib import Path
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import Dataset
from msdiffusion.training.components import build_adapter, load_components
from msdiffusion.training.config import ModelConfig, load_config
from msdiffusion.training.demo import demo_shards
from msdiffusion.training.distributed import frozen_subtrees, full_adapter_state
from msdiffusion.training.model import AdapterUNet
from msdiffusion.training.trainer import Trainer

manifest, out = sys.argv[1], Path(sys.argv[2])


def config(run, data, **extra):
    return load_config(None, {
        "model.preset": "tiny", "data.manifest": str(data), "data.resolution": 64,
        "data.num_workers": 0, "data.crop": "random", "batch_size": 2, "max_steps": 3,
        "output_dir": str(out / run), "checkpoint.every": 0, "logging.report_to": "none",
        **extra})


def reset():  # the next run builds its own Accelerator, in the same process group
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


from accelerate import PartialState

PartialState(cpu=True)  # the group is this script's: the runs leave it alone


class Recording(Dataset):
    def __init__(self, inner):
        self.inner, self.ids = inner, []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, key):
        sample = self.inner[key]
        self.ids.append(sample["id"])
        return sample


# 1. a manifest: disjoint samples, identical weights
trainer = Trainer(config("run", manifest))
trainer.input.dataset = Recording(trainer.input.dataset)
trainer.run()
rank = trainer.accelerator.process_index
adapter = trainer.accelerator.unwrap_model(trainer.model).adapter
save_file({k: v.contiguous() for k, v in adapter.state_dict().items()},
          str(out / f"rank{rank}.safetensors"))
info = {"ids": list(trainer.input.dataset.ids), "world": trainer.accelerator.num_processes,
        "type": str(trainer.accelerator.distributed_type)}

# 2. shards; a signal to process 1 only stops both after the same step
shards = out / "shards"
if rank == 0:
    demo_shards(manifest, shards, samples_per_shard=4)
dist.barrier()


def signal_1(trainer, state):
    if state.step == 1 and trainer.accelerator.process_index == 1:
        os.kill(os.getpid(), signal.SIGUSR1)


for run, extra, callbacks in (("straight", {}, []), ("stopped", {}, [signal_1]),
                              ("stopped", {"resume": "latest"}, [])):
    reset()
    result = Trainer(config(run, shards, max_steps=4), callbacks=callbacks).run()
    info.setdefault("shard_runs", []).append([result.step, result.stopped_by])

# 3. FSDP over the same gloo group: only the adapter sharded, the global norm, the full weights
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

batch = next(iter(trainer.input.loader(trainer.state)))  # this process's samples
inputs = trainer.encoders.encode_batch(batch, torch.device("cpu"))


def model():
    components = load_components(ModelConfig(preset="tiny"))
    torch.manual_seed(0)
    return AdapterUNet(components["unet"], build_adapter(ModelConfig(preset="tiny"),
                                                         components["unet"]))


def backward(m):
    torch.manual_seed(1)
    x = torch.randn(inputs.latents.shape)
    F.mse_loss(m(x, torch.tensor([10, 500]), inputs), torch.zeros_like(x)).backward()


reference = model()
backward(reference)
squares = torch.zeros(())
for p in reference.trainable_parameters():
    dist.all_reduce(p.grad)  # the mean gradient over the processes
    squares += (p.grad / 2).pow(2).sum()
plain = model()
frozen = {n: t.detach().clone() for n, t in plain.adapter.state_dict(keep_vars=True).items()
          if not t.requires_grad}
wrapped = FSDP(plain, device_id=torch.device("cpu"), use_orig_params=True,
               ignored_modules=frozen_subtrees(plain))
managed = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
state = full_adapter_state("fsdp", wrapped, plain.adapter, frozen, is_main=rank == 0)
backward(wrapped)
local = torch.nn.utils.clip_grad_norm_([p for p in wrapped.parameters() if p.requires_grad], 1e9)
info["fsdp"] = {
    "global": float(squares.sqrt()),
    "fsdp": float(wrapped.clip_grad_norm_(1e9)),
    "local": float(local),
    "managed": managed,
    "trainable": sum(p.numel() for p in reference.trainable_parameters()),
    "frozen_full": all(p.shape == q.shape for p, q in
                       zip(plain.unet.conv_in.parameters(), reference.unet.conv_in.parameters())),
}
if rank == 0:
    ref_state = reference.adapter.state_dict()  # (its weights are the initial ones too)
    info["fsdp"]["state_equal"] = sorted(state) == sorted(ref_state) and all(
        torch.equal(state[k], model().adapter.state_dict()[k]) for k in state)
(out / f"rank{rank}.json").write_text(json.dumps(info))
# the group is this script's to close: a gloo group left to the interpreter's exit can abort it
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.pop("ACCELERATE_USE_CPU", None)
    return {**env, **extra}


def test_two_cpu_processes_train_stop_resume_and_shard_correctly(tmp_path):
    manifest = build_demo_manifest(
        tmp_path / "data", EXAMPLES if EXAMPLES.is_dir() else None, num_records=12
    )
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    launch = [
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
        str(_free_port()),
        str(script),
        str(manifest),
        str(out),
    ]
    env = _env(ACCELERATE_USE_CPU="1")
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-8000:]
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # the manifest run
    assert all(i["world"] == 2 and i["type"].endswith("MULTI_CPU") for i in info)
    assert len(info[0]["ids"]) == len(info[1]["ids"]) == 3 * 2
    assert not set(info[0]["ids"]) & set(info[1]["ids"])  # 12 records, 12 draws: disjoint
    a, b = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    exported = load_file(str(out / "run" / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(a[k], exported[k]) for k in a)
    # the shard runs: both processes stop after step 2; the resumed run ends as the straight one
    assert info[1]["shard_runs"] == [[4, None], [2, "SIGUSR1"], [4, None]]
    assert info[0]["shard_runs"] == [[4, None], [2, "a signal to another process"], [4, None]]
    stopped = out / "stopped" / "checkpoints"
    state = json.loads((stopped / "step-00000002" / "trainer_state.json").read_text())
    assert sorted(state["stream"]["positions"]) == ["0", "1"]
    straight = load_file(str(out / "straight" / "adapter" / "adapter.safetensors"))
    resumed = load_file(str(out / "stopped" / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # FSDP: only the trained weights sharded (the frozen ones whole), the global norm, gathered
    fsdp = [i["fsdp"] for i in info]
    for f in fsdp:
        assert abs(f["fsdp"] - f["global"]) < 1e-4 * f["global"] and f["frozen_full"]
    assert abs(fsdp[0]["local"] - fsdp[1]["local"]) > 1e-3 * fsdp[0]["global"]  # shards differ
    assert sum(f["managed"] for f in fsdp) == fsdp[0]["trainable"]
    assert fsdp[0]["state_equal"]


def test_processes_that_do_not_form_one_run_are_refused(tmp_path):
    """A MULTI_GPU config on a machine without GPUs, without ACCELERATE_USE_CPU=1: each process
    would train alone and write the same files. Both stop with the reason; nothing is written."""
    manifest = build_demo_manifest(tmp_path / "data", None, num_records=2)
    out = tmp_path / "run"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "cpu2.yaml"),
        "--main_process_port",
        str(_free_port()),
        "-m",
        "msdiffusion.cli",
        "train",
        "--preset",
        "tiny",
        "--manifest",
        str(manifest),
        "--output-dir",
        str(out),
        "--report-to",
        "none",
    ]
    proc = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=200)
    assert proc.returncode != 0
    assert proc.stderr.count("the launcher started 2 processes but each runs alone") == 2
    assert not out.exists()


def test_processes_started_without_a_launcher_stop_together_on_a_signal(tmp_path):
    """As `srun` starts one task per GPU (ranks in the environment, no `accelerate launch` in
    between) and SLURM's ``--signal`` reaches every process of the step: both processes form one
    run, stop after the same step with one checkpoint, and exit with the configured code."""
    manifest = build_demo_manifest(tmp_path / "data", None, num_records=8)
    out = tmp_path / "run"
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(
            ACCELERATE_USE_CPU="1",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        command = [sys.executable, "-m", "msdiffusion.cli", "train", "--preset", "tiny"]
        command += ["--manifest", str(manifest), "--output-dir", str(out), "--report-to", "none"]
        command += ["--max-steps", "1000", "--set", "data.resolution=64"]
        command += ["--set", "data.num_workers=0", "--set", "logging.every=1"]
        command += ["--set", "checkpoint.signal_exit_code=143"]
        procs.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        metrics = out / "logs" / "metrics.jsonl"
        deadline = time.monotonic() + 200
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
        for proc in procs:
            proc.send_signal(signal.SIGUSR1)
        results = [proc.communicate(timeout=200) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [143, 143], [err[-3000:] for _, err in results]
    assert "stopped by SIGUSR1" in results[0][0]  # the main process reports
    (checkpoint,) = (out / "checkpoints").glob("step-*")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and checkpoint.name == f"step-{state['step']:08d}"
    assert not (out / "adapter").exists()
