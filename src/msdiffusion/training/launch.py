"""What every training command starts with: an Accelerator for the config, and the manifest's
usable records (parsed on every process, files checked once, bad records skipped and counted).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .baddata import SkipLog
from .config import TrainConfig

__all__ = ["make_accelerator", "usable_records"]

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
    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=mixed,
        cpu=config.cpu,
        log_with=report_to,
        step_scheduler_with_optimizer=False,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")
        ),
    )


def usable_records(
    config: TrainConfig, accelerator: Any, skips: SkipLog
) -> tuple[list[Any], Path, int]:
    """The manifest's usable records: parsed on every process, files checked by the main one,
    which shares the verdict. Bad records are skipped, counted and logged; too many stop the run.
    Returns (records, manifest folder, number skipped)."""
    from accelerate.utils import broadcast_object_list

    from ..manifest import scan_manifest

    manifest = config.data.manifest
    if manifest is None:
        raise InputError("data.manifest", "is required (or data.cache_dir)", None)
    verdict: list[Any] = [None]
    if accelerator.is_main_process:
        scan = scan_manifest(manifest, check_files=config.data.check_files, progress=True)
        verdict = [
            (
                [r.line for r in scan.records],
                [(p.record_id, p.describe()) for p in scan.problems[:50]],
                len(scan.problems),
                scan.total,
            )
        ]
    if accelerator.num_processes > 1:
        broadcast_object_list(verdict)
    kept_lines, shown, n_bad, total = verdict[0]
    if not accelerator.is_main_process:
        scan = scan_manifest(manifest, check_files=False)
    keep = set(kept_lines)
    records = [r for r in scan.records if r.line in keep]
    skips.report(shown, "manifest check")
    skips.check(n_bad, total, f"manifest {manifest}", runtime=False)
    if not records:
        raise InputError("data.manifest", "has no usable record", manifest)
    logger.info("data: %d usable records of %d in %s", len(records), total, manifest)
    return records, scan.root, n_bad
