"""`msdiffusion train` — train or fine-tune an adapter; `msdiffusion train cache` — precompute
the frozen encoders' outputs. A JSON config (``--config``) with flags and ``--set key=value``
overriding it; several processes/GPUs/nodes through ``accelerate launch`` (docs/training.md).

Import-light: torch and diffusers are imported when a command runs, not when ``--help`` does.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "config_from_args"]

# flag dest → dotted config key
FLAG_KEYS = {
    "output_dir": "output_dir",
    "manifest": "data.manifest",
    "cache_dir": "data.cache_dir",
    "preset": "model.preset",
    "base": "model.base",
    "image_encoder": "model.image_encoder",
    "vae": "model.vae",
    "init_adapter": "model.init_adapter",
    "resolution": "data.resolution",
    "batch_size": "batch_size",
    "max_steps": "max_steps",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "learning_rate": "optim.learning_rate",
    "mixed_precision": "mixed_precision",
    "weight_dtype": "model.weight_dtype",
    "gradient_checkpointing": "gradient_checkpointing",
    "ema": "ema.enabled",
    "seed": "seed",
    "resume": "resume",
    "allow_inexact_resume": "allow_inexact_resume",
    "checkpoint_every": "checkpoint.every",
    "validation_every": "validation.every",
    "num_workers": "data.num_workers",
    "cpu": "cpu",
    "report_to": "logging.report_to",
}


def _common(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS  # only flags actually given override the config file
    parser.add_argument(
        "--config",
        default=s,
        metavar="JSON",
        help="training config (JSON; see configs/train.json, docs/training.md)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=s,
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optim.lr_scheduler=cosine "
        "(value parsed as JSON, else a string); repeatable",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        default=s,
        help="print the resolved config as JSON and exit",
    )
    g = parser.add_argument_group("common overrides (same as --set)")
    g.add_argument("--output-dir", default=s, help="run folder (checkpoints, logs, adapter)")
    g.add_argument("--manifest", default=s, help="training manifest (JSONL)")
    g.add_argument("--cache-dir", default=s, help="embedding cache folder")
    g.add_argument(
        "--preset", choices=["tiny", "toy", "sdxl"], default=s, help="frozen model preset"
    )
    g.add_argument("--base", default=s, help="SDXL folder or hub id")
    g.add_argument("--image-encoder", default=s, help="CLIP vision folder or hub id")
    g.add_argument("--vae", default=s, help="VAE folder or hub id ('base': the base's own)")
    g.add_argument(
        "--init-adapter",
        default=s,
        help="fine-tune from our adapter folder or a released ms_adapter.bin",
    )
    g.add_argument("--resolution", type=int, default=s, help="square training size")
    g.add_argument("--batch-size", type=int, default=s, help="per process and micro-step")
    g.add_argument("--max-steps", type=int, default=s, help="optimizer steps")
    g.add_argument("--gradient-accumulation-steps", type=int, default=s)
    g.add_argument("--learning-rate", type=float, default=s)
    g.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default=s)
    g.add_argument(
        "--weight-dtype",
        choices=["auto", "fp32", "fp16", "bf16"],
        default=s,
        help="dtype of the frozen weights",
    )
    g.add_argument("--gradient-checkpointing", action="store_true", default=s)
    g.add_argument("--ema", action="store_true", default=s, help="keep an EMA of the adapter")
    g.add_argument("--seed", type=int, default=s)
    g.add_argument(
        "--resume",
        default=s,
        metavar="latest|DIR",
        help="continue from the latest checkpoint of --output-dir, or a folder; the config's "
        "hyper-parameters (e.g. --learning-rate) take effect",
    )
    g.add_argument(
        "--allow-inexact-resume",
        action="store_true",
        default=s,
        help="resume even where the run cannot continue bit-exactly (another seed or process "
        "count, missing random states, other shard streams)",
    )
    g.add_argument("--checkpoint-every", type=int, default=s, metavar="N")
    g.add_argument("--validation-every", type=int, default=s, metavar="N")
    g.add_argument("--num-workers", type=int, default=s, help="DataLoader workers per process")
    g.add_argument("--cpu", action="store_true", default=s, help="train on the CPU")
    g.add_argument("--report-to", default=s, help="tensorboard (default), wandb or none")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train` (and `train cache`) to the `msdiffusion` command line."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune an MS-Diffusion adapter",
        description="Train (or fine-tune) an MS-Diffusion adapter on a JSONL manifest with "
        "accelerate. Run it under `accelerate launch` for several GPUs or nodes. "
        "See docs/training.md.",
        epilog="examples:\n"
        "  msdiffusion train --config configs/train.json\n"
        "  msdiffusion train --config configs/train.json --resume latest\n"
        "  msdiffusion train cache --config configs/train.json\n"
        "  accelerate launch --config_file configs/accelerate/ddp.yaml -m msdiffusion.cli "
        "train --config configs/train.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.set_defaults(func=run_train)
    sub = parser.add_subparsers(dest="train_command", metavar="{cache}", parser_class=type(parser))
    cache = sub.add_parser(
        "cache",
        help="precompute latents, text and image embeddings for training",
        description="Run the frozen encoders once over the manifest and store their outputs in "
        "data.cache_dir (safetensors shards); training then runs the UNet only. "
        "Dropouts still apply (the empty caption's and zero image's embeddings are "
        "cached too). Resumable; shards split across `accelerate launch` processes.",
    )
    _common(cache)
    cache.set_defaults(func=run_cache)
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    """Config file + flags + ``--set`` (in that order of precedence, last wins)."""
    from .config import load_config, parse_override

    overrides: dict[str, Any] = {}
    for dest, key in FLAG_KEYS.items():
        if hasattr(args, dest):
            overrides[key] = getattr(args, dest)
    for text in getattr(args, "overrides", []):
        key, value = parse_override(text)
        overrides[key] = value
    return load_config(getattr(args, "config", None), overrides)


def _log_to_console() -> None:
    import logging

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
    )


def _printed(args: argparse.Namespace, config) -> bool:
    """``--print-config``: show the resolved config instead of running."""
    if getattr(args, "print_config", False):
        print(json.dumps(config.to_dict(), indent=2))
        return True
    return False


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if _printed(args, config):
        return 0
    from .trainer import train

    _log_to_console()
    result = train(config)
    from accelerate import PartialState

    code = config.checkpoint.signal_exit_code if result.stopped_by else 0
    if not PartialState().is_main_process:
        return code
    loss = "n/a" if result.loss is None else f"{result.loss:.4f}"
    if result.stopped_by:
        print(
            f"stopped by {result.stopped_by} at step {result.step} (loss {loss}); checkpoint: "
            f"{result.checkpoint}; continue with --resume latest"
        )
        return code
    print(
        f"adapter: {result.adapter_dir} (step {result.step}, loss {loss}, "
        f"{result.samples_skipped} records skipped at load time)"
    )
    return 0


def run_cache(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if _printed(args, config):
        return 0
    from .cache import build_cache_for_config

    _log_to_console()
    index = build_cache_for_config(config)
    if index:
        print(
            f"cache: {config.data.cache_dir} ({len(index['records'])} records in "
            f"{len(index['shards'])} shards, {len(index['skipped'])} skipped)"
        )
    return 0
