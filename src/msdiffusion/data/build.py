"""``build_dataset``: an input folder → a dataset folder of WebDataset shards, resumably.

1. List the inputs (sorted), cut them into shard groups (``writer.ShardPlan``), and claim the
   output folder: ``build.json`` holds the settings' fingerprint and ``inputs.json`` the input
   list, so a resumed build cannot silently mix settings or inputs.
2. Run the stages over the inputs of the shards not yet done (``engine.py``: Ray Data by
   default, or in this process) and write their shards as the items arrive (``writer.py``).
3. Once every shard is done: ``index.json`` (shard list, counts, fingerprints), ``failed.jsonl``
   (inputs that raised, with stage and reason) and the report (``report.py``).

Re-running the same command resumes at the first shard without its marker; a finished dataset
re-finishes without loading any model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_open, atomic_write_json
from ..errors import InputError
from ..shards import FORMAT, INDEX_NAME, ShardSample, iter_samples
from ..version import __version__
from .config import BuildConfig
from .engine import ENGINES, ensure_ray, run_local, run_ray, stage_error
from .report import RecordSummary, write_report

if TYPE_CHECKING:
    from .models import Models
from .sources import SidecarCaptions, list_inputs
from .stats import Stats
from .writer import ShardPlan, ShardWriter, read_entry

__all__ = ["BuildResult", "build_dataset", "claim_output", "finish_dataset", "MODES"]

MODES = ("videos", "images")


@dataclass
class BuildResult:
    """What a run did; ``index`` is None while shards remain (``max_shards``)."""

    index: Path | None
    report: dict[str, Any] | None
    shards_written: int  # by this run
    shards_done_before: int  # found done (resumed)
    shards_remaining: int  # not done after this run
    inputs: int


def build_dataset(
    inputs: str | Path,
    out: str | Path,
    *,
    mode: str,
    cfg: BuildConfig | None = None,
    engine: str = "ray",
    models: Models | None = None,
    max_shards: int | None = None,
    progress: bool = True,
) -> BuildResult:
    """Build (or resume building) the dataset of the ``mode`` files under ``inputs``.

    ``engine``: ``ray`` (default; connects to or starts Ray) or ``local`` (this process; then
    ``models`` may pass already loaded models). ``max_shards``: write at most this many shards in
    this run (time-boxed jobs).
    """
    if mode not in MODES:
        raise InputError("mode", f"one of {', '.join(MODES)}", mode)
    if engine not in ENGINES:
        raise InputError("--engine", f"one of {', '.join(ENGINES)}", engine)
    if models is not None and engine != "local":
        raise InputError(
            "models",
            "loaded models can only be passed to the local engine (Ray "
            "actors load theirs from the config)",
            type(models).__name__,
        )
    if max_shards is not None and max_shards < 0:
        raise InputError("--max-shards", ">= 0", max_shards)
    from .models import check_specs  # torch: only the driver and the model actors load it

    cfg = cfg or BuildConfig()
    root, out = Path(inputs), Path(out)
    files = list_inputs(root, mode)
    if not files:
        raise InputError(f"--{mode}", f"no {mode[:-1]} files found in the folder", str(root))
    stages = ("captioner", "detector", "segmenter") + (("features",) if mode == "videos" else ())
    plan = ShardPlan(len(files), cfg.shards.inputs_per_shard)
    existed, claimed = out.exists(), (out / "build.json").is_file()
    if not claimed:  # a new build: its models are checked before the folder is claimed
        check_specs(cfg.models, stages, loadable=models is None)
    claim_output(out, cfg, mode, root, files)
    writer = ShardWriter(out, cfg, plan)
    pending = writer.pending()
    if claimed and pending:  # a started build needs its models only for what is left
        check_specs(cfg.models, stages, loadable=models is None)
    before = plan.count - len(pending)
    if max_shards is not None:
        pending = pending[:max_shards]
    written = 0
    if pending:
        captions = SidecarCaptions(root, cfg.use_sidecar_captions)
        work = [(o, files[o], captions.get(files[o])) for n in pending for o in plan.orders(n)]
        started = False
        try:
            if engine == "ray":
                started = ensure_ray(cfg)
                items = run_ray(work, root, mode, cfg)  # one bar, ours, below
            else:
                items = run_local(work, root, mode, cfg, models=models)
            for _ in writer.write(_counted(items, work, progress), pending):
                written += 1
        except Exception as err:
            if not claimed and before == 0 and written == 0:
                _unclaim(out, existed)  # a build that never started leaves nothing behind
            cause = stage_error(err)
            if cause is err:
                raise
            raise cause from None
        finally:
            if started:
                import ray

                ray.shutdown()
    remaining = len(writer.pending())
    if remaining:
        return BuildResult(None, None, written, before, remaining, len(files))
    index, report = finish_dataset(out, cfg, mode, plan)
    return BuildResult(index, report, written, before, 0, len(files))


def _counted(items: Iterator[Any], work: list[Any], progress: bool) -> Iterator[Any]:
    """``items`` passed through, with a progress bar over the inputs they come from (they arrive
    in input order)."""
    from tqdm.auto import tqdm

    position = {order: k for k, (order, _, _) in enumerate(work)}
    with tqdm(total=len(work), desc="building", unit="input", disable=not progress) as bar:
        for item in items:
            done = position.get(item.order, bar.n - 1) + 1
            if done > bar.n:
                bar.update(done - bar.n)
            yield item
        bar.update(len(work) - bar.n)


def _unclaim(out: Path, existed: bool) -> None:
    """Undo ``claim_output`` (and any empty folders) of a build that wrote no shard."""
    import shutil

    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in ("build.json", "inputs.json"):
        (out / name).unlink(missing_ok=True)
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def claim_output(out: Path, cfg: BuildConfig, mode: str, root: Path, files: list[str]) -> None:
    """Write ``build.json`` and ``inputs.json``, or check that a started build matches; refuse
    a folder that holds something else (nothing a user made is overwritten)."""
    info = {
        "mode": mode,
        "config_fingerprint": cfg.fingerprint(),
        "raw_fingerprint": cfg.raw_fingerprint(),
        "config": cfg.to_dict(),
        "msdiffusion_version": __version__,
        "input": str(root.resolve()),
    }
    path, listed = out / "build.json", out / "inputs.json"
    started = any((out / "shards").glob("shard-*.json"))
    if path.is_file() and started:
        old = json.loads(path.read_text())
        if old.get("mode") != mode:
            raise InputError(
                "--out",
                f"this dataset was built from --{old.get('mode')}; use another folder",
                str(out),
            )
        if old.get("config_fingerprint") != info["config_fingerprint"]:
            raise InputError(
                "--out",
                "this dataset was started with other settings (a different "
                "--config); resume with the same config, or use another folder",
                str(out),
            )
        before = json.loads(listed.read_text())
        if before != files:
            added, removed = len(set(files) - set(before)), len(set(before) - set(files))
            raise InputError(
                f"--{mode}",
                f"the files changed since this build started ({added} "
                f"added, {removed} removed); resume needs the same files — build "
                "the new ones into another --out",
                str(root),
            )
        return
    if out.exists() and not path.is_file() and any(out.iterdir()):
        raise InputError(
            "--out", "exists and is not a dataset folder (will not overwrite)", str(out)
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(listed, files, indent=None)
    atomic_write_json(path, info)


def _pick(entries: list[dict[str, Any]], seed: int, keep: int = 12) -> list[ShardSample]:
    """``keep`` samples drawn with ``seed`` over the whole dataset, read from their shards."""
    total = sum(e["samples"] for e in entries)
    wanted = sorted(random.Random(seed).sample(range(total), min(keep, total)))
    picked, offset = [], 0
    for entry in entries:
        inside = [w - offset for w in wanted if offset <= w < offset + entry["samples"]]
        offset += entry["samples"]
        if not inside:
            continue
        for n, sample in enumerate(iter_samples([entry["root"] / entry["path"]])):
            if n in inside:
                picked.append(sample)
            if n >= inside[-1]:
                break
    return picked


def finish_dataset(
    out: Path, cfg: BuildConfig, mode: str, plan: ShardPlan, extra: dict[str, Any] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Every shard done → ``index.json``, ``failed.jsonl`` and the report (reads the markers)."""
    entries = [read_entry(out, n) for n in range(plan.count)]
    totals, summary, failed = Stats(), RecordSummary(), []
    for entry in entries:
        if entry["config_fingerprint"] != cfg.fingerprint():
            raise InputError(
                "--out",
                f"shard {entry['shard']} was built with other settings; use another folder",
                str(out),
            )
        totals.merge(Stats.from_dict(entry["stats"]))
        summary.merge(entry["summary"])
        failed.extend(entry["failed"])
        entry["root"] = out
    with atomic_open(out / "failed.jsonl") as handle:
        for row in failed:
            handle.write(json.dumps(row) + "\n")
    keys = ("path", "raw", "inputs", "samples", "subjects", "bytes", "raw_bytes")
    index = {
        "format": FORMAT,
        "mode": mode,
        "config_fingerprint": cfg.fingerprint(),
        "raw_fingerprint": cfg.raw_fingerprint(),
        "inputs": plan.inputs,
        "samples": summary.samples,
        "subjects": summary.subjects,
        "failed_inputs": len(failed),
        "shards": [{k: e[k] for k in keys} for e in entries],
        "msdiffusion_version": __version__,
        **(extra or {}),
    }
    atomic_write_json(out / INDEX_NAME, index)
    report = write_report(out, summary, totals, cfg, mode, _pick(entries, cfg.seed), failed, extra)
    return out / INDEX_NAME, report
