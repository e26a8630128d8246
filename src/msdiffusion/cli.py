"""`msdiffusion` command line: thin layer over inference, conversion, training, data, evaluation.

User errors (bad arguments, missing files, unavailable models) end with exit code 2 and one line on
stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
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
        command = self.prog.removeprefix("msdiffusion").strip()  # "generate", "train cache"
        raise UsageError(f"{command}: {message}" if command else message)


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


# The libraries' notes to developers (deprecated arguments, optional backends) are not the user's
# to act on. Python's own -W / PYTHONWARNINGS, when given, decide instead.
THIRD_PARTY = r"(diffusers|transformers|huggingface_hub|accelerate|peft|torch|gradio|PIL)(\.|$)"


def quiet_libraries() -> None:
    """No third-party deprecation notes or logging below errors in a command's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    if not sys.stderr.isatty():  # a log file: the libraries' loading bars are noise in it
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if sys.warnoptions:
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)
    # raised on our calls' behalf, attributed to our modules: name them by their text
    warnings.filterwarnings("ignore", message=r".*(local_dir_use_symlinks|torch_dtype|upcast_vae)")


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        from .progress import console

        with console():  # log lines and prints above the progress bars
            return int(args.func(args) or 0)
    except MSDiffusionError as err:
        return fail(str(err).replace("\n", " "))
    except FileNotFoundError as err:
        return fail(f"file not found: {err.filename or err}")
    except (PermissionError, IsADirectoryError, NotADirectoryError) as err:
        if err.filename is None:
            raise
        return fail(f"cannot use {err.filename}: {(err.strerror or str(err)).lower()}")
    except KeyboardInterrupt:
        return fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
