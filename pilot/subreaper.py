"""The fallback tracker, where no cgroup can be had: the pilot is a child subreaper, so orphans of the
payload are re-parented to it and stay findable; the payload's processes are found by walking the
process table from the pilot's children. A process that forks and exits fast enough between two walks
can escape this one.

Each process is known by its PID and its start time (clock ticks since boot, from /proc/<pid>/stat), so a
PID reused by a stranger is never taken for the payload's. Signals go through a pidfd opened while the
start time is checked, so they reach the process that was seen or nothing. The tree is ended without a
race against its forks: every process is stopped first (SIGSTOP), walk after walk, until a walk finds
none running and none new; then all get SIGKILL at once, and the pilot waits on their pidfds together
and reaps in bulk.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Optional

from pilot.tracker import Tracker, log_denied

PR_SET_CHILD_SUBREAPER = 36
FREEZE_LIMIT = 2.0  # seconds of walks to stop a tree that keeps forking; then it is killed as it is
KILL_ROUNDS = 5  # stop-and-kill rounds, for processes a round could not stop in time
DEAD = "ZXx"  # /proc/<pid>/stat states of a process that has ended
STOPPED = "Tt"


def become_subreaper() -> bool:
    """Orphans of the payload are re-parented to this process (Linux >= 3.4); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    state: str
    start: int  # clock ticks after boot


def proc_stat(pid: int) -> Optional[ProcStat]:
    """One process's parent, state and start time; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read(4096)
    except OSError:
        return None
    fields = data.rpartition(b")")[2].split()  # the command name, in parentheses, may hold anything
    try:
        return ProcStat(int(fields[1]), fields[0].decode("ascii", "replace"), int(fields[19]))
    except (IndexError, ValueError):
        return None


def proc_table() -> dict[int, ProcStat]:
    """Every process of the node, in one pass over /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


@dataclass
class SubreaperTracker(Tracker):
    """The payload's first process, its descendants, and any orphan re-parented to the pilot since the
    payload started (the pilot being a child subreaper); processes that were there before are not it."""

    kind: str = "subreaper"
    _before: set[tuple[int, int]] = field(default_factory=set)  # the pilot's children before the payload
    _known: dict[int, int] = field(default_factory=dict)  # pid -> start, as seen by a walk
    _seen: set[int] = field(default_factory=set)
    _first: int = 0  # the first process's start: no payload process started before it

    def __post_init__(self) -> None:
        me = os.getpid()
        self._before = {(pid, s.start) for pid, s in proc_table().items() if s.ppid == me}

    def attach(self, leader: int, started: float) -> None:
        super().attach(leader, started)
        stat = proc_stat(leader)
        if stat is not None:
            self._first = stat.start
            self._known[leader] = stat.start

    def tree(self) -> dict[int, ProcStat]:
        """The payload's processes in one walk, ended ones (zombies) included."""
        table = proc_table()
        me = os.getpid()
        children: dict[int, list[int]] = {}
        for pid, stat in table.items():
            children.setdefault(stat.ppid, []).append(pid)
        todo = [pid for pid in children.get(me, ())
                if (pid, table[pid].start) not in self._before and table[pid].start >= self._first]
        # what a walk saw, should it have escaped the pilot's tree (e.g. re-parented elsewhere)
        todo += [pid for pid, start in self._known.items() if pid in table and table[pid].start == start]
        found: dict[int, ProcStat] = {}
        while todo:
            pid = todo.pop()
            if pid not in found:
                found[pid] = table[pid]
                todo.extend(children.get(pid, ()))
        for pid, stat in found.items():
            self._known.setdefault(pid, stat.start)
        self._seen |= found.keys()  # to reap those that end as the pilot's children (and their CPU time)
        return found

    def pids(self) -> set[int]:
        return {pid for pid, stat in self.tree().items() if stat.state not in DEAD}

    def signal(self, signum: int, exclude: int = -1) -> list[int]:
        denied: list[int] = []
        handles = self._open(self._live(exclude), denied)
        try:
            _send(handles, signum, denied)
        finally:
            _close(handles)
        log_denied(denied)
        return denied

    def kill_all(self, exclude: int = -1) -> None:
        for _ in range(KILL_ROUNDS):
            denied: list[int] = []
            handles = self._freeze(exclude, denied)
            try:
                _send(handles, signal.SIGKILL, denied)
                _wait_ended(handles, 10)
            finally:
                _close(handles)
            log_denied(denied)
            self.reap_orphans(exclude)
            if not handles or denied:
                return  # all ended, or nothing more can be done for those

    def _live(self, exclude: int) -> dict[int, ProcStat]:
        return {pid: s for pid, s in self.tree().items() if s.state not in DEAD and pid != exclude}

    def _freeze(self, exclude: int, denied: list[int]) -> dict[int, int]:
        """Stop every process of the tree (but `exclude`), walk after walk, until a walk finds every one
        stopped and none new, or FREEZE_LIMIT passed; the handles of all of them."""
        handles: dict[int, int] = {}
        deadline = time.monotonic() + FREEZE_LIMIT
        try:
            while True:
                tree = self._live(exclude)
                new = self._open({pid: s for pid, s in tree.items() if pid not in handles}, denied)
                _send(new, signal.SIGSTOP, denied)
                handles.update(new)
                running = [pid for pid, s in tree.items() if s.state not in STOPPED and pid in handles]
                if (not new and not running) or time.monotonic() >= deadline:
                    return handles
                if not new:
                    time.sleep(0.001)  # stops on their way: let them arrive
        except BaseException:
            _close(handles)
            raise

    @staticmethod
    def _open(tree: dict[int, ProcStat], denied: list[int]) -> dict[int, int]:
        """A handle on each process of `tree` checked to be the one seen (the same start time): its pidfd,
        or -1 where the kernel has no pidfds (Linux < 5.3: signalled by PID, right after the check)."""
        handles = {}
        for pid, stat in tree.items():
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except (OSError, AttributeError) as exc:
                if getattr(exc, "errno", None) in (errno.EPERM, errno.EACCES):
                    denied.append(pid)
                    continue
                fd = -1
            now = proc_stat(pid)
            if now is None or now.start != stat.start:  # ended, and the PID may be another process's now
                _close({pid: fd})
                continue
            handles[pid] = fd
        return handles


def _send(handles: dict[int, int], signum: int, denied: list[int]) -> None:
    for pid, fd in handles.items():
        try:
            if fd >= 0:
                signal.pidfd_send_signal(fd, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            denied.append(pid)


def _close(handles: dict[int, int]) -> None:
    for fd in handles.values():
        if fd >= 0:
            os.close(fd)


def _wait_ended(handles: dict[int, int], timeout: float) -> None:
    """Wait until every process of `handles` has ended (its pidfd is readable then), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    for fd in handles.values():
        if fd >= 0:
            poller.register(fd, select.POLLIN)
    left = sum(1 for fd in handles.values() if fd >= 0)
    while left and time.monotonic() < deadline:
        for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            poller.unregister(fd)
            left -= 1
    by_pid = [pid for pid, fd in handles.items() if fd < 0]
    while by_pid and time.monotonic() < deadline:
        by_pid = [pid for pid in by_pid if (proc_stat(pid) or ProcStat(0, "X", 0)).state not in DEAD]
        if by_pid:
            time.sleep(0.005)
