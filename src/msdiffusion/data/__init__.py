"""Building multi-subject training data from raw videos and images (``msdiffusion data build``).

A Ray Data program (docs/data.md): decode → sample frames → split shots → drop bad frames → pick
target and reference frames → caption → entity phrases → open-vocabulary detection → filters →
match each subject in a reference frame (or augment it, for image-only input) → SAM mask →
WebDataset shards (``msdiffusion.shards``) + raw model outputs + report.

    from msdiffusion.data import BuildConfig, build_dataset
    result = build_dataset("clips/", "datasets/clips", mode="videos", cfg=BuildConfig())
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuildConfig": "msdiffusion.data.config",
    "load_build_config": "msdiffusion.data.config",
    "build_dataset": "msdiffusion.data.build",
    "BuildResult": "msdiffusion.data.build",
    "refilter_dataset": "msdiffusion.data.refilter",
    "export_manifest": "msdiffusion.data.export",
    "Models": "msdiffusion.data.models",
    "load_models": "msdiffusion.data.models",
    "Detection": "msdiffusion.data.boxes",
    "extract_phrases": "msdiffusion.data.phrases",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'msdiffusion.data' has no attribute {name!r}")
