"""Training MS-Diffusion adapters (docs/training.md).

Modules, in data-flow order: ``config`` (the JSON config), ``manifest`` (the JSONL data format and
`msdiffusion data check`), ``transforms`` / ``dropout`` / ``dataset`` / ``sampler`` (records →
batches), ``encoders`` and ``cache`` (frozen encoders, live or precomputed), ``model`` (UNet +
adapter as one module), ``checkpoint``, ``baddata``, ``validation``, ``trainer`` (the accelerate
loop), ``cli`` (`msdiffusion train`), ``demo`` (a small self-made data set).

Import-light on purpose: ``from msdiffusion.training.trainer import train`` pulls in torch.
"""
