"""Requests to stop, from signals, the server or the operator. Whoever asks only sets a flag and wakes
the main thread; the main thread acts on it at its next tick."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Optional

from pilot.errors import PilotError, signal_code

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGXCPU, signal.SIGBUS)


@dataclass
class Control:
    wake: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)  # stops data transfers
    stopping: threading.Event = field(default_factory=threading.Event)  # a signal came: the pilot ends
    signum: Optional[int] = None  # the signal that ends this pilot
    job_kill: Optional[PilotError] = None  # stop the current job with this error
    softkill: bool = False  # finish the current job, take no more

    def new_job(self) -> None:
        self.job_kill = None
        if self.signum is None:
            self.cancel.clear()

    def kill_job(self, reason: PilotError) -> None:
        if self.job_kill is None:
            self.job_kill = reason
        self.cancel.set()
        self.wake.set()

    def on_signal(self, signum: int, _frame: object = None) -> None:
        if self.signum is None:
            self.signum = signum
        self.stopping.set()
        self.kill_job(PilotError(signal_code(signum), f"pilot received signal {signal.Signals(signum).name}"))

    def install_signal_handlers(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self.on_signal)
