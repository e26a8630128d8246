"""`msdiffusion ui`: the web page (Gradio) to compose subjects, draw their boxes and generate.

This module stays import-light (the CLI imports it for ``--help``); gradio, torch and the model are
imported when the command runs. See :mod:`.app` (the page), :mod:`.handlers` (form ↔ request) and
:mod:`.canvas` (the box-drawing canvas).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``ui`` command to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "ui",
        help="web page: draw subject boxes, generate, keep the recipe",
        description="Serve the MS-Diffusion web page (Gradio): upload a reference image per "
        "subject, drag its box on a canvas of the output's aspect ratio, generate, and "
        "download each result's JSON sidecar. Binds to 127.0.0.1 unless --host says "
        "otherwise; no public link without --share.",
        epilog="examples:\n  msdiffusion ui --preset tiny\n"
        "  msdiffusion ui --preset sdxl --lora style.safetensors --lora other.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from ..commands.model import add_model_arguments

    add_model_arguments(parser, loras="many")  # the same model flags as `msdiffusion generate`
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only)",
    )
    server.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    server.add_argument(
        "--share", action="store_true", help="also open a public Gradio share link (off by default)"
    )
    server.add_argument(
        "--out",
        default="outputs/ui",
        help="folder for results: a numbered run folder per generation with the images, "
        "overlays, sidecars and reference copies (default: outputs/ui)",
    )
    server.add_argument(
        "--max-queue",
        dest="max_queue",
        type=int,
        default=8,
        help="generations that may wait while one runs (default: 8)",
    )
    server.add_argument(
        "--max-file-size",
        dest="max_file_size",
        default="20mb",
        help="largest upload accepted, e.g. 20mb (default: 20mb)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Loads the model and serves the page until interrupted."""
    from ..errors import InputError, MSDiffusionError

    if not 0 <= args.port <= 65535:
        raise InputError("--port", "must be in 0..65535", args.port)
    if args.max_queue < 1:
        raise InputError("--max-queue", "must be >= 1", args.max_queue)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise MSDiffusionError("the web UI needs gradio: pip install gradio==6.31.0") from None
    from ..commands.model import ModelSettings, load_model, model_flags
    from ..commands.outputs import check_output_folder
    from .app import launch

    settings = ModelSettings(**model_flags(args))
    check_output_folder(args.out)
    model = load_model(settings)
    try:
        launch(
            model,
            host=args.host,
            port=args.port or None,
            share=args.share,
            out_dir=args.out,
            max_file_size=args.max_file_size,
            max_queue=args.max_queue,
        )
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise InputError(
            "--port",
            f"cannot serve on {args.host}:{args.port} ({err})",
            args.port,
            show_value=False,
        ) from None
    return 0
