"""``make learn``: the learning proof, end to end — world → base → adapters → evaluation → report.

    python -m msdiffusion.toyworld.learn --setting quick      # ≤ 15 min on 2 CPU cores
    python -m msdiffusion.toyworld.learn --setting full       # a few CPU hours; docs/learning.md

Every stage writes its outputs under ``--out`` and is skipped when they are already complete, so
an interrupted run continues where it stopped. The adapters are trained with ``msdiffusion
train`` on the world's manifest through a plain JSON config, and evaluated with ``msdiffusion eval
generate|score toy`` — the same commands a user runs, in subprocesses.

Variants (the paper's Table 3, in this world): *base only* (the full adapter at scale 0, which is
exactly the base model), *full*, *without grounding tokens* (trained with every sample's grounding
dropped, run with learned queries), *without masked attention* (trained and run with every
subject's attention region the whole image; its box still reaches the grounding tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from .base import BaseSettings, train_base

__all__ = ["LearnSettings", "SETTINGS", "VARIANTS", "run_learn", "main"]

T = TypeVar("T")


@dataclass(frozen=True)
class Variant:
    label: str
    train: dict[str, Any]  # config overrides (dotted keys)
    eval_args: tuple[str, ...]  # extra `msdiffusion eval generate` flags
    adapter: str | None = None  # evaluate another variant's adapter (base only: scale 0)


VARIANTS: dict[str, Variant] = {
    "base": Variant("base only (adapter at scale 0)", {}, ("--scale", "0"), adapter="full"),
    "full": Variant("MS-Diffusion (full)", {}, ()),
    "no_grounding": Variant(
        "w/o grounding tokens", {"dropout.grounding": 1.0}, ("--drop-grounding-tokens",)
    ),
    "no_mask": Variant("w/o masked attention", {"model.region": "image"}, ("--region", "image")),
}


@dataclass(frozen=True)
class LearnSettings:
    name: str
    records: int  # training records of the adapter's manifest
    train_base: bool  # False: start from the shipped toy base
    base: BaseSettings = field(default_factory=BaseSettings)
    variants: tuple[str, ...] = ("base", "full", "no_grounding", "no_mask")
    adapter_steps: int = 4000
    batch_size: int = 16
    learning_rate: float = 3e-4
    eval_limit: int | None = None  # samples (round-robin over 1-, 2-, 3-subject groups)
    eval_images: int = 2  # images per sample
    eval_steps: int = 20
    guidance_scale: float = 5.0
    scale: float = 1.0  # the image-branch scale γ at evaluation (1.0 = the training value)
    swap_samples: int = 20  # 2-subject samples generated again with their boxes swapped
    base_dir: str | None = None  # an existing base (base/ + image_encoder/) instead of either
    grid_per_group: int = 2  # samples per group in the picture grid
    threads: int | None = None  # torch threads of every stage's process (None: torch's default)
    jobs: int = 1  # variants trained (and evaluated) at once, each in its own process
    ship: bool = False  # install the base and the full adapter as the `toy` preset's model


SETTINGS = {
    "full": LearnSettings(
        "full", records=6000, train_base=True, base=BaseSettings(), adapter_steps=1500, jobs=3
    ),
    "quick": LearnSettings(
        "quick",
        records=2000,
        train_base=False,
        variants=("base", "full", "no_mask"),
        adapter_steps=400,
        eval_limit=30,
        swap_samples=8,
        jobs=2,  # two adapters and evaluations at once, a core each
        threads=1,
    ),
}


def _log(message: str) -> None:
    print(f"[learn {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run(args: list[str], log: Path, settings: LearnSettings | None = None) -> None:
    """A subprocess whose output goes to ``log`` (progress bars included); raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(args)}\n")
        handle.flush()
        done = subprocess.run(args, stdout=handle, stderr=subprocess.STDOUT, env=_env(settings))
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise RuntimeError(
            f"{args[2:4]} failed (exit {done.returncode}); last lines of {log}:\n" + "\n".join(tail)
        )


def _env(settings: LearnSettings | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if settings is not None and settings.threads:
        env["OMP_NUM_THREADS"] = str(settings.threads)  # torch's intra-op threads
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "msdiffusion.cli", *args]


class _Stages:
    """Wall-clock seconds per stage, kept in ``stages.json`` across resumed runs."""

    def __init__(self, path: Path):
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        self._lock = threading.Lock()  # variants run in parallel threads (``jobs``)

    def record(self, name: str, seconds: float) -> None:
        with self._lock:
            self.times[name] = round(seconds, 1)
            self.path.write_text(json.dumps(self.times, indent=2) + "\n")


def _each(jobs: int, work: dict[str, Callable[[], T]]) -> dict[str, T]:
    """Run the named jobs, ``jobs`` at a time (each starts its own process); results by name,
    in the given order. The first failure is raised once all started jobs have ended."""
    if jobs <= 1:
        return {name: job() for name, job in work.items()}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(job) for name, job in work.items()}
    return {name: future.result() for name, future in futures.items()}


def _world(out: Path, settings: LearnSettings, stages: _Stages) -> tuple[Path, Path]:
    """The adapter's training manifest and the toy benchmark's data folder."""
    from .bench import write_toy_benchmark
    from .dataset import write_training_set

    manifest = out / "data" / "train.jsonl"
    start = time.time()
    if not manifest.exists():
        _log(f"world: {settings.records} training records")
        write_training_set(out / "data", settings.records, workers=min(2, os.cpu_count() or 1))
    bench = out / "bench"
    if not (bench / "toy" / "spec.json").exists():
        _log("world: the toy benchmark (held-out identities)")
        write_toy_benchmark(bench)
    if "world" not in stages.times:
        stages.record("world", time.time() - start)
    return manifest, bench


def _base(out: Path, settings: LearnSettings, stages: _Stages) -> Path:
    """The folder holding ``base/`` and ``image_encoder/``."""
    from ..presets import TOY_MODEL

    if settings.base_dir is not None:
        return Path(settings.base_dir)
    if not settings.train_base:
        if not (TOY_MODEL / "base" / "model_index.json").exists():
            raise RuntimeError(f"no shipped toy base in {TOY_MODEL}: run the full setting")
        return TOY_MODEL
    done = out / "base" / "base_settings.json"
    if done.exists() and _recipe(json.loads(done.read_text())) == _recipe(asdict(settings.base)):
        return out / "base"
    _log("base: VAE, image encoder, UNet + text encoders (see base_log.jsonl)")
    start = time.time()
    train_base(out / "base", settings.base)
    stages.record("base", time.time() - start)
    return out / "base"


def _recipe(settings: dict[str, Any]) -> dict[str, Any]:
    """The base settings that change its weights (not threads or checkpoint spacing)."""
    return {k: v for k, v in settings.items() if k not in ("threads", "checkpoint_every")}


def _adapter_config(out: Path, settings: LearnSettings, base: Path, manifest: Path) -> Path:
    """The adapters' training config (the variants add ``--set`` overrides to it); the frozen
    encoders' outputs come from one embedding cache shared by every variant."""
    config = {
        "output_dir": str(out / "adapters" / "full"),
        "seed": 0,
        "batch_size": settings.batch_size,
        "max_steps": settings.adapter_steps,
        "model": {
            "preset": "toy",
            "base": str(base / "base"),
            "image_encoder": str(base / "image_encoder"),
        },
        "data": {
            "manifest": str(manifest),
            "cache_dir": str(out / "cache"),
            "resolution": 64,
            "num_workers": 1,
        },
        "optim": {"learning_rate": settings.learning_rate},
        "checkpoint": {"every": max(100, settings.adapter_steps // 8), "keep": 1},
        "logging": {"every": 25, "report_to": "none"},
    }
    path = out / "configs" / "adapter.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _cache(out: Path, config: Path, settings: LearnSettings, stages: _Stages) -> None:
    if (out / "cache" / "index.json").exists():
        return
    _log(f"embedding cache: the frozen encoders once over the manifest ({out}/cache)")
    start = time.time()
    _run(_cli("train", "cache", "--config", str(config)), out / "cache.log", settings)
    stages.record("embedding cache", time.time() - start)


def _train_adapter(
    out: Path, name: str, settings: LearnSettings, config: Path, stages: _Stages
) -> Path:
    run = out / "adapters" / name
    if (run / "adapter" / "config.json").exists():
        return run / "adapter"
    args = ["train", "--config", str(config), "--output-dir", str(run)]
    args += [f"--set={k}={json.dumps(v)}" for k, v in VARIANTS[name].train.items()]
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*")):
        args += ["--resume", "latest"]
    _log(f"adapter {name}: {settings.adapter_steps} steps ({run}/train.log)")
    start = time.time()
    _run(_cli(*args), run / "train.log", settings)
    stages.record(f"adapter {name}", time.time() - start)
    return run / "adapter"


def _evaluate(
    out: Path,
    name: str,
    settings: LearnSettings,
    base: Path,
    bench: Path,
    adapters: dict[str, Path],
    stages: _Stages,
) -> dict[str, Any]:
    variant = VARIANTS[name]
    run = out / "eval" / name
    report = run / "report.json"
    if not report.exists():
        args = [
            "eval",
            "generate",
            "toy",
            "--data",
            str(bench),
            "--out",
            str(run),
            "--preset",
            "toy",
            "--base",
            str(base / "base"),
            "--image-encoder",
            str(base / "image_encoder"),
            "--adapter",
            str(adapters[variant.adapter or name]),
            "--steps",
            str(settings.eval_steps),
            "--guidance-scale",
            str(settings.guidance_scale),
            "--scale",
            str(settings.scale),
            "--images-per-sample",
            str(settings.eval_images),
            "--no-progress",
        ]
        if settings.eval_limit:
            args += ["--limit", str(settings.eval_limit)]
        args += list(variant.eval_args)
        _log(f"eval {name}: generate and score")
        start = time.time()
        _run(_cli(*args), run / "eval.log", settings)
        _run(_cli("eval", "score", str(run), "--no-progress"), run / "eval.log", settings)
        stages.record(f"eval {name}", time.time() - start)
    return json.loads(report.read_text())


def run_learn(
    out_dir: str | Path, settings: LearnSettings, *, docs: str | Path | None = None
) -> Path:
    """Run every stage; write the report (``docs`` or ``out/learning.md``); return its path."""
    from .figures import swap_test, write_learning_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out / "stages.json")
    manifest, bench = _world(out, settings, stages)
    base = _base(out, settings, stages)
    trained = [v for v in settings.variants if VARIANTS[v].adapter is None]
    config = _adapter_config(out, settings, base, manifest)
    _cache(out, config, settings, stages)
    adapters = _each(
        settings.jobs,
        {v: partial(_train_adapter, out, v, settings, config, stages) for v in trained},
    )
    reports = _each(
        settings.jobs,
        {
            v: partial(_evaluate, out, v, settings, base, bench, adapters, stages)
            for v in settings.variants
        },
    )
    swap_file = out / "swap.json"
    if not swap_file.exists() and "full" in adapters:
        _log("swap test: 2-subject samples with their boxes exchanged")
        start = time.time()
        swap = swap_test(base, adapters["full"], bench, settings, out / "swap")
        swap_file.write_text(json.dumps(swap, indent=2) + "\n")
        stages.record("swap test", time.time() - start)
    swap = json.loads(swap_file.read_text()) if swap_file.exists() else None
    target = Path(docs) if docs else out / "learning.md"
    write_learning_report(
        target,
        out=out,
        settings=settings,
        reports=reports,
        labels={k: VARIANTS[k].label for k in reports},
        swap=swap,
        stages=stages.times,
        machine=_machine(settings.threads),
    )
    _log(f"report: {target}")
    if settings.ship:
        _ship(base, adapters["full"])
    return target


def _ship(base: Path, adapter: Path) -> None:
    """Install ``base/``, ``image_encoder/`` and the full adapter as the `toy` preset's model
    (the package's ``toyworld/model``), replacing the folder in one move."""
    from ..atomic import atomic_dir
    from ..presets import TOY_MODEL

    if base.resolve() == TOY_MODEL.resolve():
        raise RuntimeError(f"the base is the shipped model already ({TOY_MODEL}); nothing to ship")
    with atomic_dir(TOY_MODEL) as tmp:
        shutil.copytree(base / "base", tmp / "base")
        shutil.copytree(base / "image_encoder", tmp / "image_encoder")
        shutil.copytree(adapter, tmp / "adapter")
    _log(f"shipped: the toy preset's model is now {TOY_MODEL}")


def _machine(threads: int | None) -> dict[str, Any]:
    """The CPU, core count, the stages' torch threads (``threads``, else torch's default) and
    versions."""
    import torch

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msdiffusion.toyworld.learn",
        description="The toy world's learning proof: world, base, adapters, evaluation, report.",
    )
    parser.add_argument(
        "--setting",
        choices=sorted(SETTINGS),
        default="quick",
        help="quick (shipped base, brief adapters, ≤ 15 min on 2 cores) or full "
        "(the base from scratch and every ablation; a few CPU hours)",
    )
    parser.add_argument("--out", help="work folder (default outputs/learn-<setting>)")
    parser.add_argument("--docs", help="write the report here (default <out>/learning.md)")
    parser.add_argument("--adapter-steps", type=int, help="override the setting's steps")
    parser.add_argument("--records", type=int, help="override the setting's training records")
    parser.add_argument("--eval-limit", type=int, help="override the setting's samples")
    parser.add_argument(
        "--base", metavar="DIR", help="use this base (a folder with base/ and image_encoder/)"
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="install the trained base and full adapter as the toy preset's model",
    )
    parser.add_argument("--threads", type=int, help="torch threads of each stage's process")
    parser.add_argument(
        "--jobs", type=int, help="variants trained and evaluated at once (default 1)"
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1 (got {args.jobs})")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1 (got {args.threads})")
    settings = SETTINGS[args.setting]
    overrides = {
        "adapter_steps": args.adapter_steps,
        "records": args.records,
        "eval_limit": args.eval_limit,
        "base_dir": args.base,
        "threads": args.threads,
        "jobs": args.jobs,
        "ship": args.ship or None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    run_learn(args.out or f"outputs/learn-{settings.name}", settings, docs=args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
