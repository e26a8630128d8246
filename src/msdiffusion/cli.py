"""`msdiffusion` command line: thin layer over inference, conversion, training, data, evaluation.

User errors (bad arguments, missing files, unavailable models) end with exit code 2 and one line on
stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .errors import MSDiffusionError

# Command groups that live next to the code they drive; each module has `register(subparsers)`.
COMMAND_MODULES = (
    "msdiffusion.commands.generate",
    "msdiffusion.commands.convert",
    "msdiffusion.training.cli",
    "msdiffusion.data.cli",
    "msdiffusion.evaluation.cli",
    "msdiffusion.ui",
)


class UsageError(MSDiffusionError):
    """A command line that argparse accepted but that makes no sense."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 — as argparse, without the usage dump
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="msdiffusion",
        description="Multi-subject, layout-guided personalisation of SDXL (MS-Diffusion).",
    )
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"msdiffusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a command group not installed in this build
            if err.name is not None and name.startswith(err.name):
                continue
            raise
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def fail(message: str) -> int:
    print(f"msdiffusion: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # library chatter (optional backends, dtype notes) would bury the command's own output
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except MSDiffusionError as err:
        return fail(str(err).replace("\n", " "))
    except FileNotFoundError as err:
        return fail(f"file not found: {err.filename or err}")
    except KeyboardInterrupt:
        return fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
