"""What a resume does with a config that differs from the checkpoint's.

Hyper-parameters given on resume take effect: the optimizer's learning rate, betas, epsilon and
weight decay are set on its parameter groups after loading, the learning-rate schedule is rebuilt
from the config (its value is a function of the step, so this is exact when nothing changed and
the new schedule at the current step when something did), the EMA takes its decay; everything
else (batch size, accumulation, dropouts, resolution, clipping, checkpoint and validation
settings, …) is read from the config step by step anyway. Each difference is logged and recorded
in the trainer state's ``resumes``.

A change that cannot be honoured exactly is refused with the reason, unless
``allow_inexact_resume``: another seed (the rest of the data order, crops, dropouts and noise are
drawn from it), turning the EMA on (there is no average to continue). Changing the adapter's
architecture is refused always (the checkpoint holds other weights). The run's own bookkeeping
(``resume``, ``output_dir``, ``allow_inexact_resume``) and ``model.init_adapter`` (the
checkpoint's weights win) are not changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .config import TrainConfig, flatten

__all__ = ["Change", "config_changes", "not_exact", "refuse", "apply_optimization"]

logger = logging.getLogger("msdiffusion.training")

NOT_CHANGES = ("resume", "output_dir", "allow_inexact_resume", "model.init_adapter")
INEXACT = {
    "seed": "the rest of the run's data order, crops, dropouts and noise are drawn from it",
}
NEVER = {
    "model.preset": "the checkpoint's adapter was built for another model",
    "model.adapter": "the checkpoint's adapter has other hyper-parameters",
}
WARN = ("model.",)  # the frozen model's sources: a moved folder, or really another model


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    inexact: str | None = None  # why it cannot be honoured exactly
    never: str | None = None  # why it cannot be honoured at all

    def describe(self) -> str:
        return f"{self.key} {self.old!r} → {self.new!r}"


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every field whose value differs between the checkpoint's config and this one."""
    before, after = flatten(old, keep=("model.adapter",)), flatten(new, keep=("model.adapter",))
    changes = []
    for key in sorted(set(before) | set(after)):
        if key in NOT_CHANGES or key not in before or before.get(key) == after.get(key):
            continue  # a field the checkpoint's version did not have keeps its new value
        inexact = INEXACT.get(key)
        if key == "ema.enabled" and after[key]:
            inexact = "the checkpoint has no EMA to continue; it would start from the weights"
        changes.append(Change(key, before[key], after.get(key), inexact, NEVER.get(key)))
    return changes


def not_exact(path: Path, saved: Any, num_processes: int) -> list[str]:
    """Why continuing checkpoint ``path`` (its state ``saved``) with ``num_processes`` processes
    would not be exact, as far as the random states go."""
    if saved.world_size != num_processes:
        return [
            f"it was written by {saved.world_size} processes, this run has {num_processes}: "
            "their random states (noise, timesteps) do not carry over"
        ]
    missing = [f"random_states_{i}.pkl" for i in range(num_processes)]
    missing = [name for name in missing if not (path / name).is_file()]
    if missing:
        return [f"{', '.join(missing)} missing: noise and timesteps would not continue"]
    return []


def refuse(changes: list[Change], extra: list[str], allow_inexact: bool, where: str) -> None:
    """Raise for what cannot be honoured (``extra``: other inexact points, e.g. the process
    count); with ``allow_inexact`` only for what cannot be honoured at all."""
    never = [f"{c.describe()}: {c.never}" for c in changes if c.never]
    inexact = [f"{c.describe()}: {c.inexact}" for c in changes if c.inexact] + extra
    if never:
        raise InputError("resume", "cannot continue this checkpoint: " + "; ".join(never), where)
    if inexact and not allow_inexact:
        raise InputError(
            "resume",
            "cannot continue exactly: "
            + "; ".join(inexact)
            + " (--allow-inexact-resume continues anyway)",
            where,
        )
    for reason in inexact:
        logger.warning("resume: not exact: %s", reason)
    for change in changes:
        if not (change.never or change.inexact):
            level = logging.WARNING if change.key.startswith(WARN) else logging.INFO
            logger.log(level, "resume: %s (applied)", change.describe())


def apply_optimization(optimizer: Any, scheduler: Any, ema: Any, config: TrainConfig) -> None:
    """Put the config's optimizer, schedule and EMA settings on the loaded objects.

    ``scheduler`` is the LambdaLR itself (not accelerate's wrapper): its step count is kept, its
    factors and base rate come from the config, and each group's rate is set for that step.
    """
    from diffusers.optimization import get_scheduler

    o = config.optim
    groups = optimizer.param_groups
    for group in groups:
        group.update(
            betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay, eps=o.adam_epsilon
        )
    step = scheduler.last_epoch
    fresh = get_scheduler(  # only for its factors (building it sets the groups' rate: redone below)
        o.lr_scheduler,
        optimizer,
        num_warmup_steps=o.lr_warmup_steps,
        num_training_steps=config.max_steps,
    )
    scheduler.lr_lambdas = fresh.lr_lambdas
    scheduler.base_lrs = [o.learning_rate for _ in groups]
    rates = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(groups, rates):
        group["initial_lr"], group["lr"] = o.learning_rate, lr
    scheduler._last_lr = rates
    if ema is not None:
        ema.decay, ema.use_ema_warmup = config.ema.decay, config.ema.warmup
