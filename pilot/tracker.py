"""What a payload's process tracker offers (pilot.proctrack picks one per job: pilot.cgroups or
pilot.subreaper): the payload's processes, their memory and CPU where the kernel accounts them, signals
to them all, and their end."""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Optional

import psutil

log = logging.getLogger(__name__)


class Tracker(ABC):
    """The processes of one payload."""

    kind: str = ""
    _seen: set[int]
    reaped_cpu: float = 0.0  # CPU seconds of the orphans the pilot reaped (and of what they reaped)
    leader: int = -1
    started: float = 0.0

    def preexec(self) -> Optional[Callable[[], None]]:
        """What the payload's first process runs before exec (as the pilot's user), if anything."""
        return None

    def attach(self, leader: int, started: float) -> None:
        """The payload's first process has started."""
        self.leader = leader
        self.started = started

    @abstractmethod
    def pids(self) -> set[int]:
        """The payload's live processes (its first one included while it runs)."""

    def processes(self) -> list[psutil.Process]:
        found = []
        for pid in sorted(self.pids()):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except psutil.Error:
                pass
        return found

    def memory_bytes(self) -> Optional[int]:
        """The tree's memory now, from the kernel's accounting where there is one; None: sum the processes."""
        return None

    def memory_peak_bytes(self) -> Optional[int]:
        """The tree's highest memory so far, from the kernel's accounting where there is one, else None."""
        return None

    def cpu_seconds(self) -> Optional[float]:
        """User + system time of every process the tree ever had, from the kernel's accounting where
        there is one; None: count what the pilot reaps (`reaped_cpu` and the first process's own)."""
        return None

    def signal(self, signum: int, exclude: int = -1) -> list[int]:
        """Send `signum` to every payload process but `exclude`; returns the PIDs that could not be
        signalled for lack of permission (a payload under another user, with a non-root pilot)."""
        denied = []
        for pid in self.pids():
            if pid == exclude:
                continue
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
            except PermissionError:
                denied.append(pid)
        log_denied(denied)
        return denied

    @abstractmethod
    def kill_all(self, exclude: int = -1) -> None:
        """SIGKILL everything of the payload (but `exclude`, the first process, when asked)."""

    def wait_empty(self, timeout: float, exclude: int = -1) -> bool:
        """Wait until no payload process but `exclude` is alive; reap those that were the pilot's
        children (orphans re-parented to it)."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap_orphans(exclude)
            left = self.pids() - {exclude}
            if not left:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def reap_orphans(self, exclude: int = -1) -> None:
        """Collect the zombies of payload processes re-parented to the pilot (a subreaper); never the
        first process, which the payload runner reaps itself, for its exit status."""
        for pid in list(self._seen):
            if pid in (exclude, self.leader):
                continue
            try:
                done, _, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (or already collected)
                self._seen.discard(pid)
                continue
            if done:
                self._seen.discard(pid)
                self.reaped_cpu += usage.ru_utime + usage.ru_stime  # with what it reaped itself

    def close(self) -> None:  # noqa: B027 - nothing to release for most trackers
        """Release what the tracker holds (after the payload has ended)."""


def log_denied(denied: list[int]) -> None:
    if denied:
        log.error("cannot signal payload process(es) %s: permission denied", sorted(denied))
