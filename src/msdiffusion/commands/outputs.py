"""Where results go: an output folder checked before any model loads, and a new numbered run
folder in it for every generation (``outputs/0001``, ``outputs/0002``, …), so nothing is ever
overwritten — the command line and the web page share the scheme.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..atomic import check_writable_folder as check_output_folder

__all__ = ["check_output_folder", "new_run_folder", "RUN_NAME"]

RUN_NAME = re.compile(r"\d{4,}")  # run folders: 0001, 0002, …


def new_run_folder(root: str | os.PathLike[str]) -> Path:
    """A new, empty run folder under ``root``: the number after the highest one there."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in root.iterdir() if RUN_NAME.fullmatch(p.name)]
    number = max(numbers, default=0) + 1
    while True:  # another process may take the number first
        folder = root / f"{number:04d}"
        try:
            folder.mkdir()
        except FileExistsError:
            number += 1
            continue
        return folder
