"""The rules for plain values that every validator shares (the pipeline's arguments, requests,
subjects): a number is an ``int`` or ``float`` — never a boolean, never a string of digits —
finite and within its range; an integer is an ``int`` (not a boolean); a flag is a boolean.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import InputError, Location

__all__ = ["check_number", "check_integer", "check_flag", "range_rule"]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too


def range_rule(
    kind: str,
    low: float | None,
    high: float | None,
    low_open: bool = False,
    high_open: bool = False,
) -> str:
    """``"must be a number >= 0 and <= 10"``."""

    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    return f"must be {kind}" + (" " + " and ".join(bounds) if bounds else "")


def check_number(
    argument: str | Location,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the range; returns it as a float."""
    rule = range_rule("a finite number", low, high, low_open, high_open)
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise InputError(argument, rule, value)
    number = float(value)
    if (
        not math.isfinite(number)
        or (low is not None and (number <= low if low_open else number < low))
        or (high is not None and (number >= high if high_open else number > high))
    ):
        raise InputError(argument, rule, value)
    return number


def check_integer(
    argument: str | Location, value: Any, *, low: int | None = None, high: int | None = None
) -> int:
    """An integer (not a boolean, not a float) in the range; returns it as an int."""
    rule = range_rule("an integer", low, high)
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise InputError(argument, rule, value)
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise InputError(argument, rule, value)
    return number


def check_flag(argument: str | Location, value: Any) -> bool:
    """A boolean (not 0/1, not "true")."""
    if not _is_bool(value):
        raise InputError(argument, "must be true or false", value)
    return bool(value)
