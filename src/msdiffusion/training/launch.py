"""What every training command starts with: an Accelerator for the config (whose processes must
form one run), and the usable lines of a JSONL manifest.

The manifest is indexed by every process (``records.ManifestLines``: byte offsets, nothing
parsed). With ``data.check_files`` each process then checks its own share of the records — every
W-th, parsed, its files stat'ed — and the processes exchange only the verdicts on the bad ones,
after equal work: no process scans the manifest while the others wait in a collective. Bad
records are skipped and counted; too many stop the run.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .baddata import SkipLog
from .config import TrainConfig
from .distributed import check_world_size
from .records import ManifestLines

__all__ = ["make_accelerator", "manifest_lines"]

logger = logging.getLogger("msdiffusion.training")


def _cpu_only(config: TrainConfig) -> bool:
    forced = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return config.cpu or forced or not torch.cuda.is_available()


def make_accelerator(config: TrainConfig, *, with_trackers: bool = True) -> Any:
    """An Accelerator for ``config``: mixed precision resolved, the LR schedule stepped once per
    optimizer step (not once per process), trackers under ``<output_dir>/logs``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mixed = config.mixed_precision
    if mixed == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):
            mixed = None  # the `accelerate launch` config decides
        elif _cpu_only(config):
            mixed = "no"
        else:
            mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    report_to = config.logging.report_to if with_trackers else None
    if report_to == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise InputError(
                "logging.report_to",
                "tensorboard is not installed (pip install "
                "tensorboard==2.21.0), or set logging.report_to=none",
                report_to,
            )
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=mixed,
        cpu=config.cpu,
        log_with=report_to,
        step_scheduler_with_optimizer=False,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")
        ),
    )
    check_world_size(accelerator)
    return accelerator


def manifest_lines(
    config: TrainConfig, accelerator: Any, skips: SkipLog
) -> tuple[ManifestLines, int, int]:
    """The manifest's usable lines (all of them without ``data.check_files``: bad records are
    then found when drawn). Returns (lines, number skipped, lines in the manifest)."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from ..manifest import RecordProblem, check_record_files

    manifest = config.data.manifest
    if manifest is None:
        raise InputError("data.manifest", "is required (or data.cache_dir)", None)
    if not Path(manifest).is_file():
        raise InputError("data.manifest", "file does not exist", manifest)
    lines = ManifestLines.index(manifest)
    total = len(lines)
    if not config.data.check_files:
        bad: list[tuple[int, str | None, str]] = []
    else:
        rank, world = accelerator.process_index, accelerator.num_processes
        mine = range(rank, total, world)

        def check(i: int) -> tuple[int, str | None, str] | None:
            try:
                check_record_files(lines.record(i), lines.root)
            except RecordProblem as err:
                return (i, err.record_id, err.describe())
            return None

        with ThreadPoolExecutor(max_workers=8) as pool:  # stat calls wait on the filesystem
            found = list(
                tqdm(
                    pool.map(check, mine),
                    total=len(mine),
                    desc="checking records",
                    unit="record",
                    disable=not accelerator.is_main_process,
                )
            )
        bad = [x for x in found if x is not None]
        if world > 1:
            bad = sorted(gather_object(bad))
    skips.report([(rid, reason) for _, rid, reason in bad[:50]], "manifest check")
    skips.check(len(bad), total, f"manifest {manifest}", runtime=False)
    keep = np.ones(total, dtype=bool)
    keep[[i for i, _, _ in bad]] = False
    if not keep.any():
        raise InputError("data.manifest", "has no usable record", manifest)
    logger.info("data: %d usable records of %d in %s", int(keep.sum()), total, manifest)
    return lines.select(keep), len(bad), total
