"""``msdiffusion eval``: list, generate, score and compare benchmark runs.

Kept import-light: torch, transformers and accelerate are imported inside the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..flags import add_flag
from .commands import (
    _cmd_compare,
    _cmd_generate,
    _cmd_list,
    _cmd_protocols,
    _cmd_score,
    _cmd_standin,
)

__all__ = ["register"]

_EPILOG = """examples:
  msdiffusion eval protocols paper                       (what the default protocol fixes)
  msdiffusion eval list msbench --data ../shared/data
  msdiffusion eval generate msbench --data DATA --out runs/tiny --preset tiny --limit 13 \\
      --num-images 1 --steps 4 --height 256 --width 256
  accelerate launch --num_processes 8 -m msdiffusion.cli eval generate msbench --data DATA \\
      --out runs/ms --preset sdxl --num-images 5
  msdiffusion eval score runs/ms
  msdiffusion eval score theirs/ --benchmark msbench --data DATA      (bring your own images)
  msdiffusion eval compare runs/ms theirs/ --out runs/compare
Every run is measured against a protocol (--protocol, default paper; toy for the toy benchmark):
settings not given take the protocol's, and settings that differ from it are recorded as
deviations. See docs/evaluation.md."""

_PROTOCOL_HELP = (
    "evaluation protocol: paper | dreambench | mip-adapter | toy; `eval protocols` lists what "
    "each fixes (default: paper; toy for the toy benchmark)"
)


def _box(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"box must be x0,y0,x1,y1 (got {text!r})") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"box must have 4 numbers (got {text!r})")
    return values


def _groups(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def _add_benchmark_options(
    p: argparse.ArgumentParser, *, positional: bool, scoring: bool = True
) -> None:
    if positional:
        p.add_argument("benchmark", metavar="BENCH", help="msbench | dreambench | toy")
        p.add_argument(
            "--data",
            required=True,
            metavar="DIR",
            help="benchmark images: the benchmark folder or a parent holding "
            "msbench/, dreambench/ or toy/ (required)",
        )
    p.add_argument(
        "--spec",
        metavar="JSON",
        help="MS-Bench definition (default: the packaged one, the published MS-Bench)",
    )
    p.add_argument(
        "--box",
        type=_box,
        metavar="X0,Y0,X1,Y1",
        help="DreamBench subject box (default: 0.25,0.25,0.75,0.75)",
    )
    if not scoring:
        return
    p.add_argument(
        "--references",
        choices=("all", "first"),
        default=None,
        help="DreamBench references compared with: all of a subject's images (the DreamBooth "
        "protocol) or the first (the conditioning one) (default: the protocol's; paper: all)",
    )


def _example(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def _sub(sub: Any, name: str, help: str, description: str | None, *examples: str) -> Any:
    return sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=_example(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def register(subparsers: Any) -> None:
    """Add ``eval`` and its subcommands to the ``msdiffusion`` parser."""
    ev = subparsers.add_parser(
        "eval",
        help="benchmarks: list, generate, score, compare (MS-Bench, DreamBench)",
        description="Evaluate on MS-Bench and DreamBench: enumerate, generate (resumable, "
        "sharded with accelerate), score (CLIP-T, CLIP-I, DINO, M-DINO, layout IoU) "
        "and compare runs, under a named protocol.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ev.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", parser_class=type(ev))
    sub.required = True

    p = _sub(
        sub,
        "protocols",
        "list the evaluation protocols, or show one's settings",
        None,
        "msdiffusion eval protocols paper",
    )
    p.add_argument(
        "name", nargs="?", metavar="NAME", help="a protocol to show (default: list them all)"
    )
    p.set_defaults(func=_cmd_protocols)

    p = _sub(
        sub,
        "list",
        "count a benchmark's samples per group; export its samples",
        None,
        "msdiffusion eval list msbench --data DATA --export samples.jsonl",
    )
    _add_benchmark_options(p, positional=True)
    p.add_argument(
        "--export",
        metavar="FILE",
        help="write every sample (id, prompt, phrases, boxes, references, the image "
        "paths a bring-your-own run uses) as JSON lines (default: none)",
    )
    add_flag(
        p,
        "num_images",
        default=5,
        help="images per sample, for --export",
        aliases=("--images-per-sample",),
    )
    p.set_defaults(func=_cmd_list)

    p = _sub(
        sub,
        "standin",
        "write placeholder MS-Bench/DreamBench data (the real layouts and counts) and the toy "
        "benchmark, to try the harness offline",
        "Write placeholder MS-Bench/DreamBench data (the real folder layouts and sample "
        "counts, placeholder pictures: scores on them mean nothing) and the toy benchmark "
        "(generated from the toy world, so real) under DIR.",
        "msdiffusion eval standin outputs/evaldata",
    )
    p.add_argument("out", metavar="DIR", help="folder to write the benchmarks in")
    p.add_argument(
        "--benchmarks",
        type=_groups,
        default=["msbench", "dreambench", "toy"],
        metavar="LIST",
        help="comma-separated benchmarks (default: msbench,dreambench,toy)",
    )
    p.set_defaults(func=_cmd_standin)

    p = _sub(
        sub,
        "generate",
        "generate a benchmark's images into a run folder (resumable; shards under accelerate "
        "launch)",
        None,
        "msdiffusion eval generate msbench --data DATA --out runs/tiny --preset tiny --limit 13 "
        "--num-images 1 --steps 4 --height 256 --width 256",
    )
    _add_benchmark_options(p, positional=True, scoring=False)
    p.add_argument(
        "--out", required=True, metavar="RUN", help="run folder, created or resumed (required)"
    )
    p.add_argument("--protocol", metavar="NAME", help=_PROTOCOL_HELP)
    add_flag(
        p,
        "num_images",
        help="images per sample",
        shown="the protocol's; paper: 5",
        aliases=("--images-per-sample",),
    )
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="at most N samples, round-robin over the groups (default: all)",
    )
    p.add_argument(
        "--groups",
        type=_groups,
        metavar="LIST",
        help="comma-separated groups (combination types) (default: all)",
    )
    m = p.add_argument_group("model")
    add_flag(m, "preset", default="tiny")
    for key in ("base", "image_encoder", "adapter"):
        add_flag(m, key, shown="the preset's")
    add_flag(m, "dtype", shown="auto: fp16 on CUDA, fp32 on the CPU")
    add_flag(m, "device", shown="this process's accelerate device")
    g = p.add_argument_group("sampling (default: the protocol's; paper: the released model's)")
    add_flag(g, "steps", shown="the protocol's; paper: 30")
    add_flag(g, "guidance_scale", shown="the protocol's; paper: 7.5")
    add_flag(g, "scale", shown="the protocol's; paper: 0.6")
    add_flag(g, "height", shown="the protocol's; paper: 1024")
    add_flag(g, "width", shown="the protocol's; paper: 1024")
    add_flag(
        g,
        "negative_prompt",
        shown="the protocol's; paper: the released script's "
        "'monochrome, lowres, bad anatomy, worst quality, low quality'",
    )
    add_flag(
        g,
        "seed",
        help="base seed (each image's seed derives from it, the sample id and the image index)",
        shown="the protocol's; paper: 0",
    )
    add_flag(g, "batch_size", default=1)
    g.add_argument(
        "--region",
        choices=("box", "image"),
        default="box",
        help="attention regions: box (the method) or image (every subject "
        "everywhere, boxes only in the grounding tokens: the ablation for "
        "adapters trained with model.region=image) (default: box)",
    )
    add_flag(
        g,
        "drop_grounding_tokens",
        help="resampler from its learned queries, without phrase and box (for "
        "adapters trained with dropout.grounding=1)",
    )
    p.add_argument(
        "--overlays", action="store_true", help="also write layout overlays (default: off)"
    )
    add_flag(p, "no_progress")
    p.set_defaults(func=_cmd_generate)

    p = _sub(
        sub,
        "score",
        "score a run folder (ours, or bring-your-own images)",
        None,
        "msdiffusion eval score runs/ours",
        "msdiffusion eval score theirs/ --benchmark msbench --data DATA",
    )
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument(
        "--benchmark",
        metavar="BENCH",
        help="for runs without run.json (bring-your-own images) (default: the run's)",
    )
    p.add_argument("--data", metavar="DIR", help="benchmark images (default: the run's)")
    p.add_argument(
        "--index",
        metavar="FILE",
        help="index file listing sample_id and image (default: RUN/index.jsonl, else "
        "RUN/images/<sample_id>/<k>.png)",
    )
    p.add_argument(
        "--protocol",
        metavar="NAME",
        help=_PROTOCOL_HELP.replace(" and its default)", ")")
        + " (default: the one the run was generated under)",
    )
    _add_benchmark_options(p, positional=False)
    m = p.add_argument_group("models (default: the protocol's)")
    m.add_argument(
        "--models",
        choices=("protocol", "tiny"),
        default="protocol",
        help="tiny: random tiny scorers (offline smoke test; numbers are meaningless) "
        "(default: protocol)",
    )
    m.add_argument(
        "--clip-model",
        metavar="ID|DIR",
        help="CLIP for CLIP-T/CLIP-I "
        "(default: the protocol's; paper: openai/clip-vit-base-patch32)",
    )
    m.add_argument(
        "--dino-model",
        metavar="ID|DIR",
        help="DINO for DINO/M-DINO (default: the protocol's; paper: facebook/dino-vits16)",
    )
    m.add_argument(
        "--detector-model",
        metavar="ID|DIR",
        help="detector for M-DINO and IoU; 'none' skips detection (default: the protocol's; "
        "paper: google/owlv2-base-patch16-ensemble)",
    )
    m.add_argument(
        "--dino-preprocessing",
        choices=("resize-crop", "processor"),
        help="resize-crop: short side 256 bicubic + centre crop 224; "
        "processor: the model's own (a 224² squash for ViTs) (default: the protocol's; "
        "paper: resize-crop)",
    )
    m.add_argument(
        "--query-template",
        metavar="TEXT",
        help="detector query (default: the protocol's; paper: 'a photo of a {}')",
    )
    m.add_argument(
        "--detection-threshold",
        type=float,
        metavar="X",
        help="a subject whose best detection scores lower is missing (0 in M-DINO, "
        "the det metrics and IoU); 0 counts every best box (default: the protocol's; "
        "paper: 0.1)",
    )
    add_flag(m, "device", default="auto")
    add_flag(m, "dtype", shown="the protocol's; paper: fp32")
    add_flag(m, "batch_size", default=32, help="images per scorer call")
    m.add_argument(
        "--detector-batch-size",
        type=int,
        metavar="N",
        default=8,
        help="images per detector call (default: 8)",
    )
    m.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="reference-feature cache (default: RUN/cache)",
    )
    c = p.add_argument_group(
        "report (conventions default to the protocol's: raw cosines, except mip-adapter's CLIP-T)"
    )
    c.add_argument(
        "--percent",
        action="store_const",
        const=True,
        help="similarities x100 (default: the protocol's; paper: off)",
    )
    c.add_argument(
        "--clip-t-weight",
        type=float,
        metavar="W",
        help="CLIP-T as CLIPScore: W*max(cos,0), W=2.5 in the CLIPScore paper (default: the "
        "protocol's; paper: none, the raw cosine)",
    )
    c.add_argument(
        "--resamples",
        type=int,
        metavar="N",
        default=2000,
        help="bootstrap resamples per interval (default: 2000)",
    )
    c.add_argument(
        "--worst",
        type=int,
        metavar="N",
        default=8,
        help="worst samples shown with their images (default: 8)",
    )
    add_flag(p, "no_progress")
    p.set_defaults(func=_cmd_score)

    p = _sub(
        sub,
        "compare",
        "scored runs side by side",
        None,
        "msdiffusion eval compare runs/ours runs/theirs --out runs/compare",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="scored run folders")
    p.add_argument(
        "--names",
        type=_groups,
        metavar="LIST",
        help="comma-separated names (default: the folder names)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write compare.md/json and charts there (default: print only)",
    )
    p.add_argument(
        "--all-samples",
        action="store_true",
        help="average each run over all its scored samples (default: off, only samples "
        "scored in every run)",
    )
    p.add_argument(
        "--allow-different-models",
        action="store_true",
        help="compare runs whose scorers (weights, preprocessing) or scoring settings differ "
        "(default: off, refused)",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="leave out the paper's reported numbers (default: off, shown)",
    )
    p.add_argument(
        "--percent",
        action="store_true",
        help="similarities x100 (default: off, as the runs were scored)",
    )
    p.add_argument(
        "--clip-t-weight",
        type=float,
        metavar="W",
        help="CLIP-T as CLIPScore: W*max(cos,0) (default: as the runs were scored)",
    )
    p.add_argument(
        "--resamples",
        type=int,
        metavar="N",
        default=2000,
        help="bootstrap resamples and permutations (default: 2000)",
    )
    p.set_defaults(func=_cmd_compare)


# ----------------------------------------------------------------------------------------------
