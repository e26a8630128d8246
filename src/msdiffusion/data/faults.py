"""Fault isolation: one input that raises never stops a build, nor fails its neighbours.

A stage computes its results for a whole batch of items (across inputs) without changing them,
then applies them. When the batch raises — a decoder bug, a processor that rejects a 6000×20
image, a CUDA out-of-memory — each of its items is retried alone, up to ``retries`` times (at
least once, so that one bad item cannot fail the others); an item that still raises is marked
failed with the stage and the reason, and flows on to the writer, which lists it in
``failed.jsonl`` and counts it in the report. Ray restarts a crashed worker process by itself;
these retries handle the Python exceptions Ray would otherwise turn into a failed job.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .item import Item

__all__ = ["Outcome", "attempt", "describe", "isolate"]

T = TypeVar("T")


@dataclass
class Outcome(Generic[T]):
    value: T | None
    error: str | None
    attempts: int


def describe(err: BaseException) -> str:
    """One line: the exception's type, message and where it was raised."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" [{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}]" if frames else ""
    message = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {message}{where}"


def attempt(fn: Callable[[], T], tries: int) -> Outcome[T]:
    """Call ``fn`` until it returns, at most ``tries`` times."""
    error = "not attempted"
    for n in range(1, tries + 1):
        try:
            return Outcome(fn(), None, n)
        except Exception as err:  # any exception: the caller records it
            error = describe(err)
    return Outcome(None, error, tries)


def isolate(
    stage: str,
    items: Sequence[Item],
    compute: Callable[[list[Item]], list[Any]],
    apply: Callable[[Item, Any], None],
    retries: int,
) -> None:
    """``apply(item, result)`` for each active item, ``compute`` batched; see the docstring."""
    live = [item for item in items if item.active()]
    if not live:
        return
    try:
        results = compute(live)
    except Exception:
        for item in live:
            outcome = attempt(lambda item=item: apply(item, compute([item])[0]), max(1, retries))
            if outcome.error is not None:
                item.fail(stage, outcome.error, 1 + outcome.attempts)
        return
    for item, result in zip(live, results, strict=True):
        try:
            apply(item, result)
        except Exception as err:  # a result this item cannot take: it alone fails
            item.fail(stage, describe(err), 1)
