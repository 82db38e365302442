"""The stop protocol shared by the trainer and the launchers.

SIGTERM (preemption, `scancel`, `scontrol requeue`) or SIGUSR1 (forwarded by launch.job at the time limit) asks a
run to stop: every rank finishes its step, a checkpoint is saved, and the process exits with EXIT_PREEMPTED, which
the launchers read as "resume me" (launch.job requeues after a time-limit stop).
"""

from __future__ import annotations

import os
import signal
from typing import Any

EXIT_PREEMPTED = os.EX_TEMPFAIL
"""75 (sysexits EX_TEMPFAIL): exit status after a signal-triggered checkpoint; the run is not finished, resume it."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""The signals that make a run checkpoint and stop (a launcher's own time-limit signal must be another one)."""


class StopFlag:
    """Set by SIGTERM/SIGUSR1; checked (and agreed on by all ranks) between optimizer steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
