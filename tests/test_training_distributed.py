"""Two processes on the CPU (accelerate's MULTI_CPU mode over gloo) train 3 steps: each sees
different samples, and both end with identical adapter weights — the ones exported."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from msdiffusion.training.demo import build_demo_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "subjects"

SCRIPT = r"""
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from torch.utils.data import Dataset
from msdiffusion.training.config import load_config
from msdiffusion.training.trainer import Trainer

manifest, out = sys.argv[1], Path(sys.argv[2])
config = load_config(None, {
    "model.preset": "tiny", "data.manifest": manifest, "data.resolution": 64,
    "data.num_workers": 0, "data.crop": "random", "batch_size": 2, "max_steps": 3,
    "output_dir": str(out / "run"), "checkpoint.every": 0, "logging.report_to": "none"})


class Recording(Dataset):
    def __init__(self, inner):
        self.inner, self.ids = inner, []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, key):
        sample = self.inner[key]
        self.ids.append(sample["id"])
        return sample


trainer = Trainer(config)
trainer.dataset = Recording(trainer.dataset)
trainer.run()
rank = trainer.accelerator.process_index
adapter = trainer.accelerator.unwrap_model(trainer.model).adapter
save_file({k: v.contiguous() for k, v in adapter.state_dict().items()},
          str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({
    "ids": trainer.dataset.ids, "world": trainer.accelerator.num_processes,
    "type": str(trainer.accelerator.distributed_type)}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_identically_on_different_samples(tmp_path):
    manifest = build_demo_manifest(
        tmp_path / "data", EXAMPLES if EXAMPLES.is_dir() else None, num_records=12
    )
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
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
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world"] == 2 and i["type"].endswith("MULTI_CPU") for i in info)
    assert len(info[0]["ids"]) == len(info[1]["ids"]) == 3 * 2
    assert not set(info[0]["ids"]) & set(info[1]["ids"])  # 12 records, 12 draws: disjoint
    a, b = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    exported = load_file(str(out / "run" / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(a[k], exported[k]) for k in a)
