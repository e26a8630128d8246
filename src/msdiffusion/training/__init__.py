"""Training MS-Diffusion adapters (docs/training.md).

Modules, in data-flow order: ``config`` (the JSON config), ``launch`` (the Accelerator and the
manifest's usable records — the manifest format itself is ``msdiffusion.manifest``),
``transforms`` / ``dropout`` / ``dataset`` / ``sampler`` (records → batches), ``encoders`` and
``cache`` (frozen encoders, live or precomputed), ``model`` (UNet + adapter as one module),
``checkpoint``, ``baddata``, ``validation``, ``trainer`` (the accelerate loop), ``cli``
(`msdiffusion train`), ``demo`` (a small self-made data set).

Import-light on purpose: ``from msdiffusion.training.trainer import train`` pulls in torch.
"""
