"""Stopping on a signal: SIGTERM (what SLURM, Kubernetes and most schedulers send before they kill
a job) and SIGUSR1 (SLURM's ``--signal=USR1@<seconds>`` warning) ask the run to stop.

The handler only records the signal; the training loop reads it at the next optimizer-step
boundary (the processes agree through the loss's all-reduce: one process receiving it is enough),
writes a checkpoint and returns, and `msdiffusion train` exits with
``checkpoint.signal_exit_code`` (0 by default). DataLoader workers ignore both signals
(``ignore_stop_signals``): a signal sent to the whole process group (``kill -TERM -<pgid>``, a
scheduler signalling every process of a job) must not kill them under the step that is to finish;
they end with the main process. Other processes forked while the handler is installed die of the
signal as usual.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["StopSignals", "SIGNALS", "ignore_stop_signals"]

logger = logging.getLogger("msdiffusion.training")
SIGNALS = ("SIGTERM", "SIGUSR1")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker leaves the stop signals to the main process."""
    for name in SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)


class StopSignals:
    """``with StopSignals() as stop: … stop.received`` — the name of the first signal, or None."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("signals: not handled (training runs outside the main thread)")
            return self
        for name in SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked worker: the default action (terminate)
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        if self.received is None:
            self.received = signal.Signals(number).name
            logger.warning(
                "%s received: stopping at the end of this step, after a checkpoint", self.received
            )
