"""Errors the package raises for things a user can fix.

Every user-facing error names the argument, the rule it broke and the value it got, so the CLI and
the UI can show it as one line. An ``InputError`` also carries where the argument sits as a
*location* — ``("subjects", 1, "box")``, written ``subjects[1].box`` in the message — so a form
can put the message next to its field without reading the text. Validators that check many
fields gather every error with an :class:`ErrorList` and raise them together.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "Location",
    "format_location",
    "MSDiffusionError",
    "InputError",
    "InputErrors",
    "ErrorList",
    "CheckpointError",
    "ModelNotAvailableError",
    "GenerationError",
]

Location = tuple[str | int, ...]


def format_location(location: Location) -> str:
    """``("requests", 0, "subjects", 1, "box")`` → ``"requests[0].subjects[1].box"``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class MSDiffusionError(Exception):
    """Base class of the errors a user can act on (the CLI turns them into exit code 2)."""


class InputError(MSDiffusionError, ValueError):
    """A bad argument: ``InputError("box", "x0 < x1", (0.5, 0, 0.2, 1))``.

    ``argument`` is a name, or a location tuple (``("subjects", 1, "box")``); ``location`` is
    always the tuple (a plain name is a location of one part) and ``argument`` the text.
    """

    def __init__(
        self, argument: str | Location, rule: str, value: Any = None, *, show_value: bool = True
    ):
        self.location: Location = argument if isinstance(argument, tuple) else (argument,)
        self.argument = format_location(argument) if isinstance(argument, tuple) else argument
        self.rule, self.value, self.show_value = rule, value, show_value
        super().__init__(self._text())

    @property
    def reason(self) -> str:
        """The rule and the value, without the argument (what a form shows under its field)."""
        if not self.show_value:
            return self.rule
        text = repr(self.value)
        return f"{self.rule} (got {text if len(text) <= 200 else text[:197] + '...'})"

    def _text(self) -> str:
        return f"{self.argument}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle without re-running __init__
        return (_restore, (type(self), dict(self.__dict__), self.args))

    def at(self, *prefix: str | int) -> InputError:
        """This error, located under ``prefix`` (``err.at("requests", 0)``)."""
        moved = copy.copy(self)
        moved.location = (*prefix, *self.location)
        moved.argument = format_location(moved.location)
        moved.args = (moved._text(),)
        return moved


def _restore(cls: type[InputError], state: dict[str, Any], args: tuple[Any, ...]) -> InputError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    error.args = args
    return error


class InputErrors(InputError):
    """Several bad arguments found together; ``errors`` holds each, in the order found. Reads as
    its first error (``argument``, ``rule``, ``location``); the message lists them all."""

    def __init__(self, errors: Sequence[InputError]):
        if not errors:
            raise ValueError("InputErrors needs at least one error")
        self.errors = list(errors)
        first = self.errors[0]
        self.location, self.argument = first.location, first.argument
        self.rule, self.value, self.show_value = first.rule, first.value, first.show_value
        MSDiffusionError.__init__(self, "; ".join(str(e) for e in self.errors))

    def at(self, *prefix: str | int) -> InputErrors:
        return InputErrors([e.at(*prefix) for e in self.errors])


class ErrorList:
    """Gathers the ``InputError`` of several independent checks, to report them all at once::

    errors = ErrorList()
    with errors.check():
        validate_box(box, ("subjects", 0, "box"))
    with errors.check():
        ...
    errors.raise_if_any()  # one error: itself; several: InputErrors
    """

    def __init__(self) -> None:
        self.errors: list[InputError] = []

    def __bool__(self) -> bool:
        return bool(self.errors)

    def add(self, error: InputError) -> None:
        self.errors.extend(error.errors if isinstance(error, InputErrors) else [error])

    @contextmanager
    def check(self, *prefix: str | int) -> Iterator[None]:
        """Run a block; an ``InputError`` it raises is kept (located under ``prefix``)."""
        try:
            yield
        except InputError as err:
            self.add(err.at(*prefix) if prefix else err)

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise InputErrors(self.errors)


class CheckpointError(MSDiffusionError, ValueError):
    """A weights file that is not a checkpoint, or does not match the model it is loaded into."""


class ModelNotAvailableError(MSDiffusionError, OSError):
    """A model that is neither on disk nor downloadable (offline, or a wrong id)."""


class GenerationError(MSDiffusionError, RuntimeError):
    """A generation that produced no usable image (e.g. overflowed to NaN), said instead of
    returning a black or noise picture."""
