"""The ``msdiffusion eval`` subcommands' bodies (the parser is in ``cli.py``): each reads its
parsed arguments and returns the exit status. Heavy libraries are imported inside them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import InputError


def _short_dtype(name: str | None) -> str | None:
    """A dtype flag as the protocols and run records name it (fp32, fp16, bf16; auto → None)."""
    long = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    return None if name in (None, "auto") else long.get(name, name)


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

        if args.num_images < 1:
            raise InputError("--num-images", "must be >= 1", args.num_images)
        layout = RunFolder(".")
        lines = [
            json.dumps(
                {
                    **s.to_dict(),
                    "skipped": s.id in bench.skipped,
                    "images": [layout.image_relpath(s.id, k) for k in range(args.num_images)],
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
    from ..atomic import check_writable_folder
    from .generate import GenerationConfig, run_generation
    from .protocols import default_protocol, get_protocol

    check_writable_folder(args.out)
    bench = _benchmark(args)
    main = os.environ.get("RANK", "0") == "0"  # say things once, not per process
    notes = [f"warning: {bench.missing_report()}"] if bench.missing and main else []
    protocol = get_protocol(args.protocol or default_protocol(bench.name)).check(bench.name)
    samples = bench.select(groups=args.groups, limit=args.limit)
    config = GenerationConfig.from_protocol(
        protocol,
        preset=args.preset,
        base=args.base,
        image_encoder=args.image_encoder,
        adapter=args.adapter,
        dtype=_short_dtype(args.dtype),
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        scale=args.scale,
        height=args.height,
        width=args.width,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        images_per_sample=args.num_images,
        region=args.region,
        drop_grounding_tokens=args.drop_grounding_tokens,
    )
    devs = config.deviations(protocol)
    if devs and main:
        notes.append(
            f"note: protocol {protocol.name} with deviations: "
            + ", ".join(f"{k}={v['run']!r} (protocol {v['protocol']!r})" for k, v in devs.items())
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
        on_start=lambda: [print(note, file=sys.stderr) for note in notes],
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
        dtype=_short_dtype(args.dtype),
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
