"""A command's console: log lines, warnings and prints that never land on a progress bar.

Progress bars (tqdm, on stderr) redraw their line with carriage returns; a line written in
between would be glued onto the bar. :func:`console` routes every log record (warnings included,
through ``logging.captureWarnings``) and every ``print`` through ``tqdm.write``, which clears the
bars, writes the line and redraws them below it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

__all__ = ["console", "set_log_level"]

_HANDLER_FLAG = "_msdiffusion_console"


def set_log_level(level: int, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """The console's level and format (``msdiffusion train``: INFO with times)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, _HANDLER_FLAG, False):
            handler.setFormatter(logging.Formatter(fmt))
    root.setLevel(level)


@contextmanager
def console(level: int = logging.WARNING) -> Iterator[None]:
    """For the run of one command: log records at ``level`` and above (and warnings) on stderr,
    and ``print`` output on stdout, each line written above the progress bars."""
    from tqdm.contrib import DummyTqdmFile
    from tqdm.contrib.logging import logging_redirect_tqdm

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    try:
        with logging_redirect_tqdm(loggers=[root]):
            for replaced in root.handlers:  # tqdm's handler, in our format: ours to set
                setattr(replaced, _HANDLER_FLAG, True)
            with redirect_stdout(DummyTqdmFile(sys.stdout)):
                yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(previous_level)
