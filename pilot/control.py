"""Requests to stop, from signals, the server or the operator. Whoever asks only sets a flag and wakes
the main thread; the main thread acts on it at its next tick.

A signal handler may run while the main thread holds an Event's internal lock, so the handler itself
takes no lock: it appends the signal's number to an in-process queue and writes a byte to a pipe only to
wake the relay thread, which turns each queued signal into the same kill request the server or the monitor
would make. What arrives on the pipe is never read as a signal: a process of the same user can write into
it (through /proc/<pid>/fd) or drain it, so the relay only takes the bytes as a hint to look at the queue,
and looks at least once a second anyway.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import threading
from dataclasses import dataclass, field
from typing import Optional

from pilot.errors import PilotError, signal_code

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGXCPU, signal.SIGBUS)


def signal_error(signum: int) -> PilotError:
    return PilotError(signal_code(signum), f"pilot received signal {signal.Signals(signum).name}")


@dataclass
class Control:
    wake: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)  # stops data transfers
    stopping: threading.Event = field(default_factory=threading.Event)  # a signal came: the pilot ends
    signum: Optional[int] = None  # the signal that ends this pilot
    job_kill: Optional[PilotError] = None  # stop the current job with this error
    softkill: bool = False  # finish the current job, take no more
    _pipe: Optional[int] = field(default=None, repr=False)  # write end of the relay's wake-up pipe
    _pending: collections.deque = field(default_factory=collections.deque, repr=False)  # signals to relay

    def new_job(self) -> None:
        """Before each job: forget the last job's kill, but not a signal (a job taken after a signal is
        stopped before it starts)."""
        self.job_kill = signal_error(self.signum) if self.signum is not None else None
        if self.signum is None:
            self.cancel.clear()

    def kill_job(self, reason: PilotError) -> None:
        if self.job_kill is None:
            self.job_kill = reason
        self.cancel.set()
        self.wake.set()

    def on_signal(self, signum: int) -> None:
        """What a signal means (run by the relay thread, never inside the handler)."""
        if self.signum is None:
            self.signum = signum
        self.stopping.set()
        self.kill_job(signal_error(signum))

    def _handler(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        self._pending.append(signum)  # atomic; the pipe below only wakes the relay
        if self._pipe is not None:
            try:
                os.write(self._pipe, b"\0")
            except OSError:  # the pipe is full: the relay is awake already
                pass

    def relay_pending(self) -> None:
        """Act on every signal the handler queued (the relay thread's work, also callable directly)."""
        while self._pending:
            self.on_signal(self._pending.popleft())

    def install_signal_handlers(self, poll: float = 1.0) -> None:
        read_end, write_end = os.pipe()  # both ends close-on-exec: no payload inherits them
        os.set_blocking(write_end, False)
        os.set_blocking(read_end, False)
        self._pipe = write_end

        def relay() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)  # the kernel delivers them elsewhere
            while True:
                readable, _, _ = select.select([read_end], [], [], poll)
                if readable:
                    try:
                        os.read(read_end, 4096)  # content ignored: whoever wrote it
                    except (BlockingIOError, InterruptedError):
                        pass
                self.relay_pending()

        # a parent may have left these signals blocked (the mask is inherited across exec): a blocked
        # SIGTERM would never reach the pilot. Unblocked here, before the relay thread inherits the mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        threading.Thread(target=relay, name="signal-relay", daemon=True).start()
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._handler)
