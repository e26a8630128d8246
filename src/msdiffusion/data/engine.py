"""Running the stages: a Ray Data program (the default), or one process (``engine="local"``).

The Ray program, one code path from a laptop to a cluster::

    from_items(inputs)                      one row per input file, in input order
      .flat_map(decode)                     CPU tasks: decode, shots, targets (sources.py)
      .map_batches(Stage, "caption")        actor pools, one per model stage, each holding its
      .map_batches(Stage, "detect")         model (on a GPU share where the cluster has GPUs),
      .map_batches(Stage, "embed")          fed batches of items from any videos
      .map_batches(Stage, "segment")
      .map_batches(finalize)                CPU tasks: crops, masks, encoded files
      → iter_rows() → the shard writer      this process (writer.py)

Order is preserved (``preserve_order``), so the writer sees the items in input order and the
shards do not depend on the cluster's size or timing. With ``ray.fuse_model_stages`` one actor
pool runs the four model stages in turn (fewer processes on a small machine). ``ray.init``
starts Ray on this machine unless ``config.ray.address`` or ``RAY_ADDRESS`` (what
``ray job submit`` sets) names a cluster.
The local engine runs the same stage functions in this process, without Ray: the reference
path (tests compare the two) and a debugging aid.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import BuildConfig
from .faults import attempt
from .finalize import finalize
from .item import Item, pack, unpack
from .sources import front_items
from .stages import STAGES, run_stage, stage_names

if TYPE_CHECKING:  # torch loads only where models run (actors), not in the CPU tasks
    from .models import Models

__all__ = ["ENGINES", "Work", "run_local", "run_ray", "ensure_ray", "Stage"]

ENGINES = ("ray", "local")

Work = tuple[int, str, str | None]  # (order, relative path, sidecar caption)


def _safe_finalize(item: Item, cfg: BuildConfig, keep_raw: bool) -> Item:
    import time

    start = time.perf_counter()
    outcome = attempt(lambda: finalize(item, cfg, keep_raw=keep_raw), 1 + cfg.faults.retries)
    item.stats.seconds["finalize"] += time.perf_counter() - start
    if outcome.error is not None:
        item.fail("finalize", outcome.error, outcome.attempts)
        item.frames, item.features, item.masks = [], None, {}
        item.raw_files = item.sample_files = None
        return item
    return outcome.value


# ---- Ray -------------------------------------------------------------------------------------


def ensure_ray(cfg: BuildConfig) -> bool:
    """Connect to (or start) Ray; True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    quiet_ray()
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # Ray's own notes (token auth, actor restarts, the executor's progress) are not the user's to
    # act on, and workers' output would break the progress bar: a failing stage reaches the
    # driver as its exception (see ``stage_error``); workers' logs stay in Ray's session folder.
    options = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        ray.init(address=address, **options)
        return False
    ray.init(
        num_cpus=cfg.ray.num_cpus,
        include_dashboard=False,
        object_store_memory=cfg.ray.object_store_mb * 2**20,
        **options,
    )
    return True


def quiet_ray() -> None:
    """Ray's C++ and Ray Data logs at errors only (their progress notes are not ours)."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its errors reach us raised


def stage_error(err: BaseException) -> BaseException:
    """The error a model stage raised, out of Ray's wrapping (an actor that died loading a model
    reaches the driver as ``ActorDiedError`` carrying only the text of its cause): our own
    user-facing error when the text names one, else ``err`` itself."""
    import re

    from ..errors import MSDiffusionError

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MSDiffusionError):
            return err
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            err = cause
            continue
        found = re.findall(r"msdiffusion\.errors\.\w+: ([^\n]+)", str(err))
        if found:
            return MSDiffusionError(found[-1].strip())
        err = err.__cause__ or err.__context__
    return err


def _rows(batch: dict[str, np.ndarray], items: list[Item]) -> dict[str, np.ndarray]:
    rows = [pack(it) for it in items]
    return {
        "order": np.array([r["order"] for r in rows], dtype=np.int64),
        "index": np.array([r["index"] for r in rows], dtype=np.int64),
        "item": np.array([r["item"] for r in rows], dtype=object),
    }


class Stage:
    """Model stages as a Ray Data callable class: an actor loads their models once, then runs
    them in turn over each batch (one stage, or all of them with ``ray.fuse_model_stages``)."""

    def __init__(self, names: list[str], cfg: dict[str, Any]):
        from .models import load_stage_models

        self.names, self.cfg = names, BuildConfig.from_dict(cfg)
        self.models = {name: load_stage_models(self.cfg.models, STAGES[name][1]) for name in names}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [unpack(data) for data in batch["item"]]
        for name in self.names:
            run_stage(name, items, self.models[name], self.cfg)
        return _rows(batch, items)


def _decode(row: dict[str, Any], root: str, mode: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    config = BuildConfig.from_dict(cfg)
    items = front_items(
        int(row["order"]), row["input"], Path(root), mode, config, row["caption"] or None
    )
    return [pack(it) for it in items]


def _finalize(
    batch: dict[str, np.ndarray], cfg: dict[str, Any], keep_raw: bool
) -> dict[str, np.ndarray]:
    config = BuildConfig.from_dict(cfg)
    items = [_safe_finalize(unpack(data), config, keep_raw) for data in batch["item"]]
    return _rows(batch, items)


def _actor_resources(cfg: BuildConfig) -> dict[str, Any]:
    """Per model-stage actor: its CPU/GPU share and how many actors a stage may scale to."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    use_gpu = gpus > 0 and cfg.models.device != "cpu"
    cpu_share = cfg.ray.cpus_per_actor or (1.0 if cpus >= 8 else max(0.1, cpus / 8))
    max_actors = cfg.ray.max_actors or (max(1, int(gpus)) if use_gpu else 1)
    return {
        "num_cpus": cpu_share,
        "num_gpus": cfg.ray.gpus_per_actor if use_gpu else 0,
        "max_actors": max_actors,
    }


def run_ray(
    work: list[Work], root: Path, mode: str, cfg: BuildConfig, *, progress: bool = False
) -> Iterator[Item]:
    """The Ray Data program over ``work``; yields finished items in input order."""
    import ray.data

    quiet_ray()  # again: importing ray.data sets up its logging
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    data = cfg.to_dict()
    blocks = max(1, math.ceil(len(work) / cfg.ray.inputs_per_block))
    ds = ray.data.from_items(
        [{"order": o, "input": rel, "caption": cap or ""} for o, rel, cap in work],
        override_num_blocks=blocks,
    )
    ds = ds.flat_map(_decode, fn_kwargs={"root": str(root), "mode": mode, "cfg": data}, num_cpus=1)
    share = _actor_resources(cfg)
    names = stage_names(mode)
    for group in [names] if cfg.ray.fuse_model_stages else [[n] for n in names]:
        ds = ds.map_batches(
            Stage,
            fn_constructor_kwargs={"names": group, "cfg": data},
            batch_size=cfg.models.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=share["max_actors"]),
            num_cpus=share["num_cpus"],
            num_gpus=share["num_gpus"],
        )
    ds = ds.map_batches(
        _finalize,
        fn_kwargs={"cfg": data, "keep_raw": True},
        batch_size=cfg.models.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    for row in ds.iter_rows():
        yield unpack(row["item"])


# ---- one process ------------------------------------------------------------------------------


def run_local(
    work: list[Work], root: Path, mode: str, cfg: BuildConfig, *, models: Models | None = None
) -> Iterator[Item]:
    """The same stages in this process, ``ray.inputs_per_block`` inputs at a time."""
    from .models import load_stage_models

    loaded: dict[str, Models] = {}

    def models_for(name: str) -> Models:
        if models is not None:
            return models
        if name not in loaded:
            loaded[name] = load_stage_models(cfg.models, STAGES[name][1])
        return loaded[name]

    size = cfg.ray.inputs_per_block
    for start in range(0, len(work), size):
        items = [
            it
            for order, rel, cap in work[start : start + size]
            for it in front_items(order, rel, root, mode, cfg, cap)
        ]
        for name in stage_names(mode):
            batch = cfg.models.batch_size
            for first in range(0, len(items), batch):
                run_stage(name, items[first : first + batch], models_for(name), cfg)
        for item in items:
            # through pickle, as between Ray stages: both paths see the same objects
            yield unpack(pickle.dumps(_safe_finalize(item, cfg, keep_raw=True)))
