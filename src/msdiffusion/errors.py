"""Errors the package raises for things a user can fix.

Every user-facing error names the argument, the rule it broke and the value it got, so the CLI and
the UI can show it as one line.
"""

from __future__ import annotations

from typing import Any


class MSDiffusionError(Exception):
    """Base class of the errors a user can act on (the CLI turns them into exit code 2)."""


class InputError(MSDiffusionError, ValueError):
    """A bad argument: ``InputError("box", "x0 < x1", (0.5, 0, 0.2, 1))``."""

    def __init__(self, argument: str, rule: str, value: Any = None, *, show_value: bool = True):
        self.argument, self.rule, self.value = argument, rule, value
        message = f"{argument}: {rule}"
        if show_value:
            text = repr(value)
            message += f" (got {text if len(text) <= 200 else text[:197] + '...'})"
        super().__init__(message)


class CheckpointError(MSDiffusionError, ValueError):
    """A weights file that is not a checkpoint, or does not match the model it is loaded into."""


class ModelNotAvailableError(MSDiffusionError, OSError):
    """A model that is neither on disk nor downloadable (offline, or a wrong id)."""
