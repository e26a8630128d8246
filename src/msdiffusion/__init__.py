"""msdiffusion — MS-Diffusion (multi-subject, layout-guided SDXL personalisation) for diffusers.

The public API (imported lazily, so the command line starts fast)::

    from msdiffusion import MSAdapter, MSDiffusionXLPipeline, Subject
    from msdiffusion import MSDiffusionXLImg2ImgPipeline, MSDiffusionXLInpaintPipeline  # editing
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_EXPORTS = {
    "MSAdapter": "msdiffusion.models.adapter",
    "MSAdapterConfig": "msdiffusion.models.adapter",
    "GroundingResampler": "msdiffusion.models.resampler",
    "MSDiffusionXLPipeline": "msdiffusion.pipelines.pipeline_msdiffusion_xl",
    "MSDiffusionXLPipelineOutput": "msdiffusion.pipelines.pipeline_msdiffusion_xl",
    "MSDiffusionXLImg2ImgPipeline": "msdiffusion.pipelines.pipeline_msdiffusion_xl_img2img",
    "MSDiffusionXLInpaintPipeline": "msdiffusion.pipelines.pipeline_msdiffusion_xl_inpaint",
    "MSConditioning": "msdiffusion.conditioning",
    "Subject": "msdiffusion.layout",
    "GenerationRequest": "msdiffusion.request",
    "SubjectSpec": "msdiffusion.request",
    "load_pipeline": "msdiffusion.loading",
    "generate": "msdiffusion.inference",
    "InputError": "msdiffusion.errors",
    "CheckpointError": "msdiffusion.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs only
    from .conditioning import MSConditioning
    from .errors import CheckpointError, InputError
    from .inference import generate
    from .layout import Subject
    from .loading import load_pipeline
    from .models.adapter import MSAdapter, MSAdapterConfig
    from .models.resampler import GroundingResampler
    from .pipelines.pipeline_msdiffusion_xl import (
        MSDiffusionXLPipeline,
        MSDiffusionXLPipelineOutput,
    )
    from .pipelines.pipeline_msdiffusion_xl_img2img import MSDiffusionXLImg2ImgPipeline
    from .pipelines.pipeline_msdiffusion_xl_inpaint import MSDiffusionXLInpaintPipeline
    from .request import GenerationRequest, SubjectSpec


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'msdiffusion' has no attribute {name!r}")
