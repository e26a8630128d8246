"""What each distributed engine needs to train the adapter correctly (docs/training.md).

* Every engine: the processes the launcher started must form one run — a ``MULTI_GPU`` config on a
  machine without GPUs otherwise starts N independent single-process runs that all write the
  same files.
* FSDP wraps only what is trained: the frozen UNet's modules are left out of the sharding
  (``ignored_modules``: replicated, in the frozen weights' dtype, never gathered), the adapter's
  parameters — also reachable through the UNet's attention processors — form the one sharded
  flat parameter. Gradients are clipped by the global norm over all shards (FSDP's own
  ``clip_grad_norm_``; a plain clip of the trained subset would use each process's shard alone).
* DeepSpeed ZeRO-2 clips with the value the training config gives (``optim.max_grad_norm``,
  written into its config), and the exported adapter is its fp32 master weights, gathered one
  trained parameter at a time (the module's own weights are bf16 copies).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = [
    "check_world_size",
    "frozen_subtrees",
    "configure_engine",
    "clip_gradients",
    "full_adapter_state",
    "engine_of",
    "from_main",
]


def engine_of(accelerator: Any) -> str:
    """``"fsdp"``, ``"deepspeed"`` or ``"ddp"`` (DDP, one process, or anything else)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(kind, "ddp")


def from_main(accelerator: Any, value: Any) -> Any:
    """The main process's ``value``, on every process (collective)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box)
    return box[0]


def check_world_size(accelerator: Any) -> None:
    """Raise unless the launcher's process count (``WORLD_SIZE``) is the run's."""
    launched = os.environ.get("WORLD_SIZE", "").strip()
    if launched.isdigit() and int(launched) != accelerator.num_processes:
        raise InputError(
            "num_processes",
            f"the launcher started {launched} processes but each runs alone "
            f"({accelerator.distributed_type.name}, {accelerator.num_processes} process): a "
            "MULTI_GPU accelerate config on a machine without GPUs needs ACCELERATE_USE_CPU=1",
            int(launched),
        )


def frozen_subtrees(module: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``module`` without a trainable parameter (FSDP ignores them)."""
    if not any(p.requires_grad for p in module.parameters()):
        return [module]
    found: list[nn.Module] = []
    for child in module.children():
        found.extend(frozen_subtrees(child))
    return found


def configure_engine(accelerator: Any, model: nn.Module, config: Any) -> None:
    """Before ``accelerator.prepare``: FSDP ignores the frozen modules; DeepSpeed gets the micro
    batch and the clipping value of the training config (a different one in its own config is an
    error — two sources for one number)."""
    engine, state = engine_of(accelerator), accelerator.state
    if engine == "fsdp":
        state.fsdp_plugin.ignored_modules = frozen_subtrees(model)
    if engine == "deepspeed":
        ds = state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = config.batch_size  # no prepared DataLoader says
        clip = config.optim.max_grad_norm or 0.0  # DeepSpeed: 0 = no clipping
        given = ds.get("gradient_clipping", "auto")
        if given not in ("auto", None) and float(given) != float(clip):
            raise InputError(
                "gradient_clipping",
                f"in the DeepSpeed config differs from optim.max_grad_norm = {clip}; "
                "remove it there (the training config sets it)",
                given,
            )
        ds["gradient_clipping"] = clip


def clip_gradients(
    accelerator: Any, model: nn.Module, params: list[nn.Parameter], max_norm: float
) -> torch.Tensor | None:
    """Clip by the global gradient norm of the trained parameters; returns the norm (None under
    DeepSpeed, which clipped in ``backward``)."""
    engine = engine_of(accelerator)
    if engine == "deepspeed":
        return None
    if engine == "fsdp":  # all of the wrapped module's parameters: accelerate calls FSDP's clip
        return accelerator.clip_grad_norm_(list(model.parameters()), max_norm)
    return accelerator.clip_grad_norm_(params, max_norm)


def _named_state(adapter: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    return adapter.state_dict(keep_vars=True).items()


def full_adapter_state(
    engine: str,
    wrapped: nn.Module,
    adapter: nn.Module,
    frozen: dict[str, torch.Tensor],
    *,
    is_main: bool,
    ema: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The adapter's full fp32 weights on the main process ({} on the others). Collective under
    FSDP and DeepSpeed: every process calls it.

    ``frozen``: fp32 copies of the adapter's frozen tensors, taken before the engine cast them;
    ``ema``: the EMA weights of the trained parameters, by name (exported instead of them).
    """
    out: dict[str, torch.Tensor] = {}
    if engine == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        on_gpu = next(wrapped.parameters()).is_cuda  # (offloading when on the CPU crashes)
        with FSDP.summon_full_params(
            wrapped, writeback=False, rank0_only=True, offload_to_cpu=on_gpu
        ):
            if is_main:
                out = {k: v.detach().float().cpu().clone() for k, v in _named_state(adapter)}
        return out
    for name, tensor in _named_state(adapter):
        trained = isinstance(tensor, nn.Parameter) and tensor.requires_grad
        if trained and ema is not None:
            value = ema[name]
        elif trained and engine == "deepspeed":
            from deepspeed.utils import safe_get_full_fp32_param

            value = safe_get_full_fp32_param(tensor)  # the fp32 master, assembled (collective)
        elif not trained and name in frozen:
            value = frozen[name]
        else:
            value = tensor
        if is_main:
            out[name] = value.detach().float().cpu()
    return out
