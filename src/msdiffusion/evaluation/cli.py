"""``msdiffusion eval``: list, generate, score and compare benchmark runs.

Kept import-light: torch, transformers and accelerate are imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["register"]

_EPILOG = """examples:
  msdiffusion eval protocols paper                       (what the default protocol fixes)
  msdiffusion eval list msbench --data ../shared/data
  msdiffusion eval generate msbench --data DATA --out runs/tiny --preset tiny --limit 13 \\
      --images-per-sample 1 --steps 4 --height 256 --width 256
  accelerate launch --num_processes 8 -m msdiffusion.cli eval generate msbench --data DATA \\
      --out runs/ms --preset sdxl --images-per-sample 5
  msdiffusion eval score runs/ms
  msdiffusion eval score theirs/ --benchmark msbench --data DATA      (bring your own images)
  msdiffusion eval compare runs/ms theirs/ --out runs/compare
Every run is measured against a protocol (--protocol, default paper; toy for the toy benchmark):
settings not given take the protocol's, and settings that differ from it are recorded as
deviations. See docs/evaluation.md."""

_PROTOCOL_HELP = (
    "evaluation protocol: paper (default) | dreambench | mip-adapter | toy (the toy "
    "benchmark's, and its default); `eval protocols` lists what each fixes"
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
            "msbench/, dreambench/ or toy/",
        )
    p.add_argument("--spec", metavar="JSON", help="MS-Bench definition (default: the packaged one)")
    p.add_argument(
        "--box",
        type=_box,
        metavar="X0,Y0,X1,Y1",
        help="DreamBench subject box (default 0.25,0.25,0.75,0.75)",
    )
    if not scoring:
        return
    p.add_argument(
        "--references",
        choices=("all", "first"),
        default=None,
        help="DreamBench references compared with: all of a subject's images "
        "(default, the DreamBooth protocol) or the first (the conditioning one)",
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

    p = sub.add_parser("protocols", help="list the evaluation protocols, or show one's settings")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.set_defaults(func=_cmd_protocols)

    p = sub.add_parser("list", help="count a benchmark's samples per group; export its samples")
    _add_benchmark_options(p, positional=True)
    p.add_argument(
        "--export",
        metavar="FILE",
        help="write every sample (id, prompt, phrases, boxes, references, the image "
        "paths a bring-your-own run uses) as JSON lines",
    )
    p.add_argument(
        "--images-per-sample", type=int, metavar="N", default=5, help="for --export (default 5)"
    )
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "standin",
        help="write placeholder MS-Bench/DreamBench data (the real "
        "layouts and counts) and the toy benchmark, to try the harness offline",
        description="Write placeholder MS-Bench/DreamBench data (the real folder "
        "layouts and sample counts, placeholder pictures) and the toy benchmark "
        "(generated from the toy world, so real) under DIR.",
    )
    p.add_argument("out", metavar="DIR")
    p.add_argument(
        "--benchmarks",
        type=_groups,
        default=["msbench", "dreambench", "toy"],
        metavar="LIST",
        help="comma-separated (default msbench,dreambench,toy)",
    )
    p.set_defaults(func=_cmd_standin)

    p = sub.add_parser(
        "generate",
        help="generate a benchmark's images into a run folder "
        "(resumable; shards under accelerate launch)",
    )
    _add_benchmark_options(p, positional=True, scoring=False)
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (created or resumed)")
    p.add_argument("--protocol", metavar="NAME", help=_PROTOCOL_HELP)
    p.add_argument(
        "--images-per-sample", type=int, metavar="N", help="default: the protocol's (paper: 5)"
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="at most N samples, round-robin over the groups"
    )
    p.add_argument("--groups", type=_groups, help="comma-separated groups (combination types)")
    m = p.add_argument_group("model")
    m.add_argument(
        "--preset",
        default="tiny",
        help="tiny (random weights, CPU) | toy (the toy world's model) | sdxl (released)",
    )
    m.add_argument("--base", help="SDXL folder or hub id")
    m.add_argument("--image-encoder", help="CLIP image encoder folder or hub id")
    m.add_argument("--adapter", help="adapter folder, ms_adapter.bin, or hub id")
    m.add_argument(
        "--dtype", choices=("fp32", "fp16", "bf16"), help="default: fp16 on CUDA, fp32 on CPU"
    )
    m.add_argument("--device", help="default: this process's accelerate device")
    g = p.add_argument_group("sampling (default: the protocol's; paper: the released model's)")
    g.add_argument("--steps", type=int, metavar="N", help="paper: 30")
    g.add_argument("--guidance-scale", type=float, metavar="X", help="paper: 7.5")
    g.add_argument("--scale", type=float, metavar="X", help="image-branch scale γ; paper: 0.6")
    g.add_argument("--height", type=int, metavar="N", help="paper: 1024")
    g.add_argument("--width", type=int, metavar="N", help="paper: 1024")
    g.add_argument(
        "--negative-prompt",
        metavar="TEXT",
        help="paper: 'monochrome, lowres, bad anatomy, worst quality, low quality'",
    )
    g.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="base seed (each image's seed derives from it, the sample id and the "
        "image index); paper: 0",
    )
    g.add_argument(
        "--batch-size", type=int, metavar="N", default=1, help="prompts per pipeline call"
    )
    g.add_argument(
        "--region",
        choices=("box", "image"),
        default="box",
        help="attention regions: box (the method, default) or image (every subject "
        "everywhere, boxes only in the grounding tokens: the ablation for "
        "adapters trained with model.region=image)",
    )
    g.add_argument(
        "--drop-grounding-tokens",
        action="store_true",
        help="resampler from its learned queries, without phrase and box (for "
        "adapters trained with dropout.grounding=1)",
    )
    p.add_argument("--overlays", action="store_true", help="also write layout overlays")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("score", help="score a run folder (ours, or bring-your-own images)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--benchmark", help="for runs without run.json (bring-your-own images)")
    p.add_argument("--data", metavar="DIR", help="benchmark images (default: the run's)")
    p.add_argument("--index", metavar="FILE", help="index file listing sample_id and image")
    p.add_argument(
        "--protocol",
        metavar="NAME",
        help=_PROTOCOL_HELP + "; default: the one the run was generated under",
    )
    _add_benchmark_options(p, positional=False)
    m = p.add_argument_group("models (default: the protocol's)")
    m.add_argument(
        "--models",
        choices=("protocol", "tiny"),
        default="protocol",
        help="tiny: random tiny scorers (offline smoke test; numbers are meaningless)",
    )
    m.add_argument("--clip-model", metavar="ID|DIR", help="paper: openai/clip-vit-base-patch32")
    m.add_argument("--dino-model", metavar="ID|DIR", help="paper: facebook/dino-vits16")
    m.add_argument(
        "--detector-model",
        metavar="ID|DIR",
        help="paper: google/owlv2-base-patch16-ensemble; 'none' skips detection",
    )
    m.add_argument(
        "--dino-preprocessing",
        choices=("resize-crop", "processor"),
        help="resize-crop: short side 256 bicubic + centre crop 224 (paper); "
        "processor: the model's own (a 224² squash for ViTs)",
    )
    m.add_argument(
        "--query-template", metavar="TEXT", help="detector query; paper: 'a photo of a {}'"
    )
    m.add_argument(
        "--detection-threshold",
        type=float,
        metavar="X",
        help="a subject whose best detection scores lower is missing (0 in M-DINO, "
        "the det metrics and IoU); paper: 0.1; 0 counts every best box",
    )
    m.add_argument("--device", default="auto")
    m.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="paper: fp32")
    m.add_argument("--batch-size", type=int, metavar="N", default=32)
    m.add_argument("--detector-batch-size", type=int, metavar="N", default=8)
    m.add_argument("--cache-dir", metavar="DIR", help="reference-feature cache (default RUN/cache)")
    c = p.add_argument_group(
        "report (conventions default to the protocol's: raw cosines, except mip-adapter's CLIP-T)"
    )
    c.add_argument("--percent", action="store_const", const=True, help="similarities x100")
    c.add_argument(
        "--clip-t-weight",
        type=float,
        metavar="W",
        help="CLIP-T as CLIPScore: W*max(cos,0) (W=2.5 in the CLIPScore paper)",
    )
    c.add_argument(
        "--resamples",
        type=int,
        metavar="N",
        default=2000,
        help="bootstrap resamples per interval (default 2000)",
    )
    c.add_argument(
        "--worst",
        type=int,
        metavar="N",
        default=8,
        help="worst samples shown with their images (default 8)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("compare", help="scored runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--names", type=_groups, help="comma-separated names (default: folder names)")
    p.add_argument("--out", metavar="DIR", help="write compare.md/json and charts there")
    p.add_argument(
        "--all-samples",
        action="store_true",
        help="average each run over all its scored samples (default: only samples "
        "scored in every run)",
    )
    p.add_argument(
        "--allow-different-models",
        action="store_true",
        help="compare runs whose scorers (weights, preprocessing) or scoring settings differ",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="leave out the paper's reported numbers"
    )
    p.add_argument("--percent", action="store_true")
    p.add_argument("--clip-t-weight", type=float, metavar="W")
    p.add_argument(
        "--resamples",
        type=int,
        metavar="N",
        default=2000,
        help="bootstrap resamples and permutations (default 2000)",
    )
    p.set_defaults(func=_cmd_compare)


# ----------------------------------------------------------------------------------------------


def _benchmark(args: argparse.Namespace):
    from ..benchmarks import load_benchmark

    return load_benchmark(
        args.benchmark,
        args.data,
        spec=args.spec,
        box=args.box,
        references=getattr(args, "references", None) or "all",
    )


def _cmd_protocols(args: argparse.Namespace) -> int:
    from .protocols import PROTOCOLS, get_protocol

    if args.name:
        print(get_protocol(args.name).table())
        return 0
    width = max(map(len, PROTOCOLS))
    for name, proto in PROTOCOLS.items():
        print(f"{name:<{width}}  [{', '.join(proto.benchmarks)}]  {proto.description}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    bench = _benchmark(args)
    d = bench.definition
    source = d.get("spec") or d.get("prompts_file")
    print(f"{bench.name}: {bench.data_dir} (definition: {source})")
    print(bench.table())
    if bench.missing:
        print(bench.missing_report(), file=sys.stderr)
    if args.export:
        from ..atomic import atomic_write_text
        from .runs import RunFolder

        if args.images_per_sample < 1:
            raise InputError("images_per_sample", "must be >= 1", args.images_per_sample)
        layout = RunFolder(".")
        lines = [
            json.dumps(
                {
                    **s.to_dict(),
                    "skipped": s.id in bench.skipped,
                    "images": [
                        layout.image_relpath(s.id, k) for k in range(args.images_per_sample)
                    ],
                }
            )
            for s in bench.samples
        ]
        atomic_write_text(args.export, "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} samples to {args.export}")
    return 0


def _cmd_standin(args: argparse.Namespace) -> int:
    from .standin import write_standin

    root = write_standin(args.out, benchmarks=args.benchmarks)
    if {"msbench", "dreambench"} & set(args.benchmarks):
        print(
            f"wrote stand-in data to {root} (msbench/, dreambench/: placeholder images — "
            "scores on them mean nothing; docs/evaluation.md says how to get the real data)"
        )
    if "toy" in args.benchmarks:
        print(f"wrote the toy benchmark to {root}/toy (generated: the real thing)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate import GenerationConfig, run_generation
    from .protocols import default_protocol, get_protocol

    bench = _benchmark(args)
    main = os.environ.get("RANK", "0") == "0"  # say things once, not per process
    if bench.missing and main:
        print(f"warning: {bench.missing_report()}", file=sys.stderr)
    protocol = get_protocol(args.protocol or default_protocol(bench.name)).check(bench.name)
    samples = bench.select(groups=args.groups, limit=args.limit)
    config = GenerationConfig.from_protocol(
        protocol,
        preset=args.preset,
        base=args.base,
        image_encoder=args.image_encoder,
        adapter=args.adapter,
        dtype=args.dtype,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        scale=args.scale,
        height=args.height,
        width=args.width,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        images_per_sample=args.images_per_sample,
        region=args.region,
        drop_grounding_tokens=args.drop_grounding_tokens,
    )
    devs = config.deviations(protocol)
    if devs and main:
        print(
            f"note: protocol {protocol.name} with deviations: "
            + ", ".join(f"{k}={v['run']!r} (protocol {v['protocol']!r})" for k, v in devs.items()),
            file=sys.stderr,
        )
    stats = run_generation(
        bench,
        args.out,
        config,
        samples=samples,
        batch_size=args.batch_size,
        overlays=args.overlays,
        device=args.device,
        progress=not args.no_progress,
        protocol=protocol.name,
    )
    if stats["process"] == 0:
        summary = json.loads((Path(args.out) / "generation.json").read_text())
        rate = summary["images_per_s"]
        print(
            f"{summary['done']}/{summary['planned']} images done in {args.out} "
            f"({summary['generated_this_session']} new on {summary['processes']} process(es)"
            + (f", {rate:.3f} images/s" if rate else "")
            + ")"
        )
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..benchmarks import canonical_name
    from ..runtime import resolve_device
    from .protocols import default_protocol, get_protocol
    from .report import summary_table
    from .runs import RunFolder, resolve_run
    from .scoring import ScoringConfig, score_run

    meta = RunFolder(args.run).read_meta() if Path(args.run).is_dir() else None
    name = args.protocol or ((meta or {}).get("protocol") or {}).get("name")
    bench_name = (meta or {}).get("benchmark") or args.benchmark
    protocol = get_protocol(
        name or default_protocol(canonical_name(bench_name) if bench_name else "msbench")
    )
    inputs = resolve_run(
        args.run,
        benchmark=args.benchmark,
        data=args.data,
        spec=args.spec,
        box=args.box,
        index=args.index,
        references=args.references or protocol.scoring.get("references"),
    )
    protocol.check(inputs.benchmark.name)
    models: dict[str, str | None] = {"clip": None, "dino": None, "detector": None}
    if args.models == "tiny":
        from ..testing.scorers import write_tiny_scorers

        models.update(
            write_tiny_scorers(Path(args.cache_dir or inputs.run.root / "cache") / "tiny-scorers")
        )
        print(
            "note: tiny random scorers — the numbers are meaningless (smoke test)", file=sys.stderr
        )
    detector = args.detector_model or models["detector"]
    config = ScoringConfig.from_protocol(
        protocol,
        clip_model=args.clip_model or models["clip"],
        dino_model=args.dino_model or models["dino"],
        detector_model=detector,
        dino_preprocessing=args.dino_preprocessing,
        query_template=args.query_template,
        detection_threshold=args.detection_threshold,
        device=str(resolve_device(args.device)),
        dtype=args.dtype,
        batch_size=args.batch_size,
        detector_batch_size=args.detector_batch_size,
        cache_dir=args.cache_dir,
        percent=args.percent,
        clip_t_weight=args.clip_t_weight,
        resamples=args.resamples,
        worst=args.worst,
    )
    if detector is not None and detector.lower() == "none":
        config = replace(config, detector_model=None)
    report = score_run(inputs, config, progress=not args.no_progress, protocol=protocol.name)
    for role, info in report["models"].items():
        if info:
            print(f"{role}: {info['model']}")
    block = report["protocol"]
    print(
        f"protocol: {block['name']}"
        + ("" if block["comparable"] else " (with deviations: see report.md)")
    )
    print(summary_table(report))
    sk = report["counts"]["skipped"]
    if any(sk.values()):
        print(
            f"skipped images: {sk['missing']} missing, {sk['corrupt']} corrupt, "
            f"{sk['no_reference']} without reference (see report.md)",
            file=sys.stderr,
        )
    print(f"report: {inputs.run.root / 'report.md'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs

    result = compare_runs(
        args.runs,
        out=args.out,
        names=args.names,
        common_only=not args.all_samples,
        allow_different_models=args.allow_different_models,
        percent=args.percent,
        clip_t_weight=args.clip_t_weight,
        reference=not args.no_reference,
        resamples=args.resamples,
    )
    print(result["markdown"])
    return 0
