"""``data refilter``: new thresholds over a build's raw outputs → new shards, no model run.

A build keeps, per target, its frames, caption, phrases, every detection scoring at least
``raw.min_score`` (with its score), the features of their crops and the masks of the selected
subjects (``raw/raw-<n>.tar``). A refilter reads them, applies the thresholds of a new config —
``filters``, ``match``, ``augment``, ``dedup``, ``image_format``/``jpeg_quality``, ``seed``
(``config.REFILTER_SECTIONS``) — with the same code as the build (``select.py``,
``finalize.py``, near-duplicate removal), and writes a new dataset folder whose index points
at the source's raw shards. Anything else (models, frame sampling, phrases, ``raw.*``) changes
what the models saw: that needs a new build, and a config that changes it is refused, naming the
first such key. A subject matched to a box the build did not segment gets no mask (counted:
``mask:not_in_raw``). Each shard is one Ray task (or, with ``engine="local"``, one step here).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..shards import RAW_RECORD, iter_tar, raw_path, read_index
from .boxes import Detection
from .build import BuildResult, claim_output, finish_dataset
from .config import REFILTER_SECTIONS, BuildConfig
from .engine import ENGINES, ensure_ray
from .finalize import finalize
from .item import Item, pack, unpack
from .select import select
from .stats import Stats
from .writer import ShardPlan, ShardWriter, read_entry

__all__ = ["refilter_dataset", "item_from_raw", "raw_root"]


def raw_root(dataset: Path) -> Path:
    """The folder holding a dataset's ``raw/`` shards (itself, or a refilter's source)."""
    if (dataset / "raw").is_dir():
        return dataset
    source = read_index(dataset).data.get("raw_dataset")
    if source is None:
        raise InputError("dataset", "has no raw/ shards (built without them?)", str(dataset))
    return (dataset / source).resolve()


def item_from_raw(key: str, files: dict[str, bytes]) -> Item:
    """A raw record (members of ``raw/raw-<n>.tar``) → the item the build's select stage saw."""
    data = json.loads(files[RAW_RECORD])
    frames = [
        files[name]
        for name in sorted(
            (n for n in files if n.startswith("frame")), key=lambda n: int(n[5:].split(".")[0])
        )
    ]
    detections = [
        [Detection(tuple(d[:4]), d[4], int(d[5])) for d in frame] for frame in data["detections"]
    ]
    features = None
    if "features.npy" in files:
        rows = np.load(io.BytesIO(files["features.npy"]))
        bounds = np.cumsum([0] + [len(d) for d in detections])
        features = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    masks = {}
    for f, d in data["masks"]:
        with Image.open(io.BytesIO(files[f"mask{f}_{d}.png"])) as image:
            masks[(f, d)] = np.asarray(image.convert("L")) > 127
    item = Item(
        order=data["order"],
        input=data["input"],
        key=key.rsplit("-", 1)[0],
        index=data["index"],
        kind=data["kind"],
        frames=frames,
        reference_times=data["reference_times"],
        caption=data["caption"],
        caption_source=data["caption_source"],
        phrases=data["phrases"],
        detections=detections,
        features=features,
        masks=masks,
        meta=data["meta"],
        stats=Stats.from_dict(data["stats"]),
    )
    return item


def _refiltered(number: int, raw: str, cfg: dict[str, Any]) -> Iterator[Item]:
    config = BuildConfig.from_dict(cfg)
    for key, files in iter_tar(Path(raw) / raw_path(number)):
        item = item_from_raw(key, files)
        select(item, config)
        yield finalize(item, config, keep_raw=False)


def _shard_task(row: dict[str, Any], raw: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return [pack(it) for it in _refiltered(int(row["shard"]), raw, cfg)]


def _changed_key(old: dict[str, Any], new: dict[str, Any], prefix: str = "config") -> str | None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _changed_key(a, b, f"{prefix}.{key}")
            if found:
                return found
        elif a != b:
            return f"{prefix}.{key}"
    return None


def refilter_dataset(
    source: str | Path,
    out: str | Path,
    cfg: BuildConfig,
    *,
    engine: str = "ray",
    progress: bool = False,
) -> BuildResult:
    """Apply ``cfg``'s thresholds to the raw outputs of dataset ``source``; write ``out``."""
    source, out = Path(source), Path(out)
    if engine not in ENGINES:
        raise InputError("--engine", f"one of {', '.join(ENGINES)}", engine)
    build = source / "build.json"
    if not build.is_file() or not (source / "index.json").is_file():
        raise InputError(
            "dataset", "is not a finished dataset (no build.json / index.json)", str(source)
        )
    info = json.loads(build.read_text())
    old = BuildConfig.from_dict(info["config"])
    if old.raw_fingerprint() != cfg.raw_fingerprint():
        fixed = {k: v for k, v in old.output_settings().items() if k not in REFILTER_SECTIONS}
        wanted = {k: v for k, v in cfg.output_settings().items() if k not in REFILTER_SECTIONS}
        key = _changed_key(fixed, wanted) or "config"
        raise InputError(
            key,
            "refilter can only change "
            + ", ".join(REFILTER_SECTIONS)
            + "; this setting shaped the raw outputs (run data build again)",
            _lookup(cfg.to_dict(), key),
        )
    if out.resolve() == source.resolve():
        raise InputError(
            "--out", "must differ from the source dataset (it is not overwritten)", str(out)
        )
    raw = raw_root(source)
    mode = info["mode"]
    plan = ShardPlan(
        json.loads((raw / "index.json").read_text())["inputs"], cfg.shards.inputs_per_shard
    )
    claim_output(out, cfg, mode, raw, json.loads((raw / "inputs.json").read_text()))

    def base(number: int) -> tuple[Stats, list[dict[str, Any]]]:
        entry = read_entry(raw, number)
        return Stats.from_dict(entry["stats_without_raw"]), entry["failed"]

    writer = ShardWriter(out, cfg, plan, raw=False, base=base)
    pending = writer.pending()
    before = plan.count - len(pending)
    written = 0
    if pending:
        started = False
        try:
            if engine == "ray":
                started = ensure_ray(cfg)
                items = _ray_items(pending, raw, cfg, progress)
            else:
                items = (it for n in pending for it in _refiltered(n, str(raw), cfg.to_dict()))
            for _ in writer.write(items, pending):
                written += 1
        finally:
            if started:
                import ray

                ray.shutdown()
    index, report = finish_dataset(
        out,
        cfg,
        mode,
        plan,
        {"raw_dataset": os.path.relpath(raw, out), "refiltered_from": str(source.resolve())},
    )
    return BuildResult(index, report, written, before, 0, plan.inputs)


def _ray_items(pending: list[int], raw: Path, cfg: BuildConfig, progress: bool) -> Iterator[Item]:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress
    ds = ray.data.from_items([{"shard": n} for n in pending], override_num_blocks=len(pending))
    ds = ds.flat_map(_shard_task, fn_kwargs={"raw": str(raw), "cfg": cfg.to_dict()}, num_cpus=1)
    for row in ds.iter_rows():
        yield unpack(row["item"])


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split(".")[1:]:
        value = value.get(part) if isinstance(value, dict) else None
    return value
