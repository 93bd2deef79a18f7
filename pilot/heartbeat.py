"""Reports about one job, and the periodic 'still alive' update.

The Reporter is the one way a job's state reaches the dispatcher: it sends one update at a time (the
heartbeat thread and the main thread share it), records the reported state in the journal, and acts on
the server's answer (kill, softkill, debug). The Heartbeat thread repeats the journal's current state
every interval, whatever the main thread is doing (a long transfer does not starve it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from pilot.control import Control
from pilot.dispatcher.base import Command, Dispatcher, DispatcherError, FailureKind, JobUpdate
from pilot.errors import ErrorCode, PilotError
from pilot.journal import Journal

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, dispatcher: Dispatcher, control: Control, journal: Journal,
                 identity: dict[str, Any]) -> None:
        self.dispatcher = dispatcher
        self.control = control
        self.journal = journal
        self.identity = identity  # node, site_name, scheduler_id, pilot_id
        self.heartbeat: Optional[Heartbeat] = None
        self.current = "starting"  # the state a heartbeat reports
        self.kept: dict[str, Any] = {}  # fields every later update carries too (cores, start time)
        self.sent = 0
        self._sending = threading.Lock()  # one update at a time (held through the network call)
        self._state = threading.Lock()  # guards `current` only: never waits for the network

    def enter(self, state: str) -> None:
        """A new state that the next heartbeat will report, without an update of its own (saves a request
        for short steps: a long stage-out still shows as 'transferring')."""
        with self._state:
            self.current = state

    def keep(self, **fields: Any) -> None:
        """Fields sent with this and every later update (from 'running' on: coreCount, startTime)."""
        with self._state:
            self.kept.update(fields)

    def send(self, state: Optional[str] = None, **fields: Any) -> Command:
        """One update (state None: the current one, as a heartbeat repeats it); raises DispatcherError
        when the dispatcher could not take it."""
        with self._sending:
            with self._state:
                if state is not None:
                    self.current = state
                status = self.current
                fields = {**self.kept, **fields}
            update = JobUpdate(job_id=self.journal.panda_id, job_status=status,
                               attempt_nr=self.journal.attempt_nr, **self.identity, **fields)
            self.sent += 1
            command = self.dispatcher.update_job(update)
            self.journal.reported(update.job_status)
        self._obey(command)
        return command

    def try_send(self, state: Optional[str] = None, **fields: Any) -> Optional[Command]:
        """An intermediate update: a failure is logged, not fatal (the final report is what counts).
        A refusal of our credentials is fatal all the same."""
        try:
            return self.send(state, **fields)
        except DispatcherError as exc:
            if exc.kind is FailureKind.AUTH:
                raise
            log.warning("update '%s' of job %d not delivered: %s", state or self.current, self.journal.panda_id,
                        exc.diag)
            return None

    def _obey(self, command: Command) -> None:
        if command is Command.KILL:
            log.warning("the server asks to kill job %d", self.journal.panda_id)
            self.control.kill_job(PilotError(ErrorCode.KILLED_BY_SERVER, "job killed by the server (tobekilled)"))
        elif command is Command.SOFTKILL:
            log.warning("the server asks for a soft kill: no more jobs after this one")
            self.control.softkill = True
        elif command in (Command.DEBUG, Command.DEBUGOFF) and self.heartbeat is not None:
            self.heartbeat.debug(command is Command.DEBUG)


class Heartbeat(threading.Thread):
    def __init__(self, reporter: Reporter, interval: float, debug_interval: float) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.reporter = reporter
        self.normal = interval
        self.fast = min(debug_interval, interval)
        self.interval = interval
        self._halt = threading.Event()
        reporter.heartbeat = self

    def debug(self, on: bool) -> None:
        self.interval = self.fast if on else self.normal
        log.info("heartbeat every %.0f s", self.interval)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.reporter.try_send()
            except DispatcherError as exc:  # credentials refused: the main thread finds out at its next report
                log.error("heartbeat refused: %s", exc.diag)
            except Exception:  # whatever happens, the next heartbeat is still sent
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=60)
