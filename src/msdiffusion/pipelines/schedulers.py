"""Samplers by name: the schedulers a request can ask for instead of the model's own.

Each is built from the model's own scheduler config (``Scheduler.from_config``), so the noise
schedule the model was trained with (betas, timestep spacing, prediction type) is kept and only
the sampling rule changes. ``None`` keeps the model's scheduler (SDXL base: Euler).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEDULERS", "scheduler_names", "make_scheduler"]

# name → (diffusers class, config overrides, what it is)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler (SDXL base's own)"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler ancestral (adds noise each step)"),
    "dpm++": ("DPMSolverMultistepScheduler", {}, "DPM-Solver++ 2M"),
    "dpm++-karras": (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True},
        "DPM-Solver++ 2M with Karras sigmas",
    ),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {}, "PNDM"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun (two model calls per step)"),
}


def scheduler_names() -> tuple[str, ...]:
    return tuple(SCHEDULERS)


def make_scheduler(name: str, config: Any) -> Any:
    """The scheduler ``name`` built from a model's scheduler ``config``."""
    import diffusers

    class_name, overrides, _ = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)
