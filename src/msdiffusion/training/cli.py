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


# flags only `train` reads (`train cache` runs the encoders only)
TRAINING_ONLY = (
    "output_dir",
    "init_adapter",
    "max_steps",
    "gradient_accumulation_steps",
    "learning_rate",
    "mixed_precision",
    "gradient_checkpointing",
    "ema",
    "resume",
    "allow_inexact_resume",
    "checkpoint_every",
    "validation_every",
    "report_to",
)


def config_default(key: str) -> Any:
    """The built-in value of a dotted config key (what a flag not given and not in --config is)."""
    from .config import TrainConfig

    value: Any = TrainConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every config flag's help ends with its built-in default (read from ``TrainConfig`` when the
    help is shown, so it never drifts; --help is the only time this imports the config)."""

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        key = FLAG_KEYS.get(action.dest)
        if key is None or "(default" in text:
            return text
        value = config_default(key)
        if isinstance(value, bool):
            shown = "on" if value else "off"
        else:
            shown = "none" if value is None else value
        return f"{text} (default: --config's, else {shown})"


def _common(parser: argparse.ArgumentParser, *, training: bool) -> None:
    s = argparse.SUPPRESS  # only flags actually given override the config file
    parser.add_argument(
        "--config",
        default=s,
        metavar="JSON",
        help="training config (JSON; see configs/train.json, docs/training.md) (default: none, "
        "the built-in settings)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=s,
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optim.lr_scheduler=cosine "
        "(value parsed as JSON, else a string); repeatable (default: none)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        default=s,
        help="print the resolved config as JSON and exit (default: off)",
    )
    g = parser.add_argument_group("common overrides (same as --set)")

    def add(dest: str, *names: str, **kwargs: Any) -> None:
        if training or dest not in TRAINING_ONLY:
            g.add_argument(*names, dest=dest, default=s, **kwargs)

    add(
        "output_dir",
        "--out",
        "--output-dir",
        metavar="DIR",
        help="run folder: checkpoints, logs, the adapter",
    )
    add("manifest", "--manifest", metavar="JSONL", help="training manifest")
    add(
        "cache_dir",
        "--cache-dir",
        metavar="DIR",
        help="embedding cache folder (train cache writes it)",
    )
    add(
        "preset",
        "--preset",
        choices=["tiny", "toy", "sdxl"],
        help="the frozen model's component set",
    )
    add("base", "--base", metavar="DIR|ID", help="SDXL folder or hub id, instead of the preset's")
    add("image_encoder", "--image-encoder", metavar="DIR|ID", help="CLIP vision folder or hub id")
    add(
        "vae",
        "--vae",
        metavar="DIR|ID",
        help="VAE folder or hub id (e.g. an fp16-fix VAE; 'base': the base's own)",
    )
    add(
        "init_adapter",
        "--init-adapter",
        metavar="PATH",
        help="fine-tune from our adapter folder or a released ms_adapter.bin",
    )
    add("resolution", "--resolution", type=int, metavar="PX", help="square training size")
    add(
        "batch_size",
        "--batch-size",
        type=int,
        metavar="N",
        help="samples per process and micro-step" if training else "records per encoder call",
    )
    add("max_steps", "--max-steps", type=int, metavar="N", help="optimizer steps")
    add(
        "gradient_accumulation_steps",
        "--gradient-accumulation-steps",
        type=int,
        metavar="N",
        help="micro-steps per optimizer step",
    )
    add("learning_rate", "--learning-rate", type=float, metavar="X", help="AdamW learning rate")
    add(
        "mixed_precision",
        "--mixed-precision",
        choices=["auto", "no", "fp16", "bf16"],
        help="autocast dtype of the trained adapter",
    )
    add(
        "weight_dtype",
        "--weight-dtype",
        choices=["auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16"],
        help="dtype of the frozen weights",
    )
    add(
        "gradient_checkpointing",
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory)",
    )
    add("ema", "--ema", action="store_true", help="keep an EMA of the adapter")
    add("seed", "--seed", type=int, metavar="N", help="seed of the data order and the dropouts")
    add(
        "resume",
        "--resume",
        metavar="latest|DIR",
        help="continue from the latest checkpoint of --out, or a checkpoint folder; the "
        "config's hyper-parameters (e.g. --learning-rate) take effect",
    )
    add(
        "allow_inexact_resume",
        "--allow-inexact-resume",
        action="store_true",
        help="resume even where the run cannot continue bit-exactly (another seed or process "
        "count, missing random states, other shard streams)",
    )
    add(
        "checkpoint_every", "--checkpoint-every", type=int, metavar="N", help="steps per checkpoint"
    )
    add(
        "validation_every",
        "--validation-every",
        type=int,
        metavar="N",
        help="steps per validation grid (0: none)",
    )
    add(
        "num_workers", "--num-workers", type=int, metavar="N", help="DataLoader workers per process"
    )
    add("cpu", "--cpu", action="store_true", help="run on the CPU")
    add("report_to", "--report-to", metavar="NAME", help="tensorboard, wandb or none")
    if training:
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="start a new run in a --out that holds one: its checkpoints, adapter, logs and "
            "validation grids are deleted first (default: off, refused)",
        )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train` (and `train cache`) to the `msdiffusion` command line."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune an MS-Diffusion adapter",
        description="Train (or fine-tune) an MS-Diffusion adapter on a JSONL manifest with "
        "accelerate. Run it under `accelerate launch` for several GPUs or nodes. "
        "A --out that already holds a run is continued with --resume latest, or started "
        "over with --overwrite. See docs/training.md.",
        epilog="examples:\n"
        "  msdiffusion train --config configs/train.json\n"
        "  msdiffusion train --config configs/train.json --resume latest\n"
        "  msdiffusion train cache --config configs/train.json\n"
        "  accelerate launch --config_file configs/accelerate/ddp.yaml -m msdiffusion.cli "
        "train --config configs/train.json",
        formatter_class=_HelpFormatter,
    )
    _common(parser, training=True)
    parser.set_defaults(func=run_train)
    sub = parser.add_subparsers(dest="train_command", metavar="{cache}", parser_class=type(parser))
    cache = sub.add_parser(
        "cache",
        help="precompute latents, text and image embeddings for training",
        description="Run the frozen encoders once over the manifest and store their outputs in "
        "data.cache_dir (safetensors shards); training then runs the UNet only. "
        "Dropouts still apply (the empty caption's and zero image's embeddings are "
        "cached too). Resumable; shards split across `accelerate launch` processes.",
        epilog="examples:\n"
        "  msdiffusion train cache --config configs/train.json --cache-dir data/cache\n"
        "  accelerate launch -m msdiffusion.cli train cache --config configs/train.json",
        formatter_class=_HelpFormatter,
    )
    _common(cache, training=False)
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

    from ..progress import set_log_level

    set_log_level(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")


def _printed(args: argparse.Namespace, config) -> bool:
    """``--print-config``: show the resolved config instead of running."""
    if getattr(args, "print_config", False):
        print(json.dumps(config.to_dict(), indent=2))
        return True
    return False


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


# what a training run writes in its folder (--overwrite deletes them first)
RUN_CONTENTS = ("checkpoints", "adapter", "logs", "validation", "config.json")


def check_run_folder(config: Any, overwrite: bool) -> None:
    """A new run (no --resume) into a folder that holds a run is refused, unless --overwrite,
    which then deletes that run first: checkpoints of two runs in one folder would mix, and
    ``--resume latest`` would pick either."""
    import shutil

    from ..atomic import check_writable_folder
    from ..errors import InputError
    from .checkpoint import CheckpointManager

    out = check_writable_folder(config.output_dir)
    if config.resume:
        if overwrite:
            raise InputError("--overwrite", "contradicts --resume; give one of them", True)
        return
    steps = [step for step, _ in CheckpointManager(out / "checkpoints").complete()]
    held = [name for name in RUN_CONTENTS if (out / name).exists()]
    if not held:
        return
    if not overwrite:
        what = f"checkpoints up to step {steps[-1]}" if steps else ", ".join(held)
        raise InputError(
            "--out",
            f"already holds a training run ({what}); continue it with --resume latest, "
            "start over with --overwrite (deletes it), or choose another folder",
            str(out),
        )
    if _is_main_process():
        for name in held:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def check_data(config: Any) -> None:
    """The training data, before any model loads: a built cache (its index), or a manifest."""
    if config.data.cache_dir is not None:
        from .cache import read_index

        read_index(config.data.cache_dir)
    else:
        check_manifest(config)


def check_manifest(config: Any) -> None:
    """The manifest, before any model loads: a readable JSONL file with a parsable record, or a
    shard dataset (its folder, ``index.json`` or one ``.tar``) with shards."""
    from pathlib import Path

    from ..errors import InputError
    from ..manifest import scan_manifest

    manifest = config.data.manifest
    if manifest is None:
        raise InputError("--manifest", "is required (or --cache-dir with a built cache)", None)
    if not Path(manifest).exists():
        raise InputError("--manifest", "file does not exist", str(manifest))
    path = Path(manifest)
    if path.is_dir() or path.suffix == ".tar" or path.name == "index.json":  # a shard dataset
        from ..shards import shard_files

        try:
            _, shards = shard_files(path)
        except InputError as err:
            what = "is a folder, not" if path.is_dir() else "is not"
            raise InputError(
                "--manifest", f"{what} a JSONL file or a shard dataset ({err.rule})", str(path)
            ) from None
        if not shards:
            raise InputError("--manifest", "a shard dataset without shards", str(path))
        return
    try:
        scan = scan_manifest(manifest, check_files=False)
    except UnicodeDecodeError:
        raise InputError("--manifest", "is not a UTF-8 text file (JSONL)", str(manifest)) from None
    if not scan.records:
        first = f": line {scan.problems[0].line}: {scan.problems[0]}" if scan.problems else ""
        raise InputError(
            "--manifest",
            f"holds no parsable record ({scan.total} lines{first})",
            str(manifest),
            show_value=False,
        )


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if _printed(args, config):
        return 0
    check_data(config)
    check_run_folder(config, args.overwrite)  # last: --overwrite deletes the old run
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
    check_manifest(config)
    from .cache import build_cache_for_config

    _log_to_console()
    index = build_cache_for_config(config)
    if index:
        print(
            f"cache: {config.data.cache_dir} ({len(index['records'])} records in "
            f"{len(index['shards'])} shards, {len(index['skipped'])} skipped)"
        )
    return 0
