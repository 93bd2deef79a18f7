"""The payload's process tree: which processes are the payload's, how much memory they use, how to end
them all, and nothing else on the node.

Two ways, chosen per job:
- `CgroupTracker`: where cgroup v2 is writable by the pilot (as root, or in a delegated subtree), every
  payload runs in a cgroup of its own, entered before exec, so every descendant is born inside it whatever
  it does (double forks, setsid, a change of uid). Its processes are the cgroup's; it is ended as a whole
  with `cgroup.kill`, which no fork can outrun; its memory is the cgroup's where a memory controller is
  enabled. The cgroup's path goes into the journal before the payload starts, so a later pilot can end it.
- `SubreaperTracker`: the fallback. The pilot is a child subreaper, so orphans of the payload are
  re-parented to it and stay findable; the payload's processes are found by walking the pilot's children.
  A process that forks and exits fast enough between two walks can escape this one.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
CGROUP_PREFIX = "pandapilot-"
_serial = itertools.count(1)


def become_subreaper() -> bool:
    """Orphans of the payload are re-parented to this process (Linux >= 3.4); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# --- finding the cgroup v2 hierarchy ---------------------------------------------------------------
def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Optional[Path]:
    """Where cgroup v2 is mounted (the unified hierarchy, also in a hybrid layout), from mountinfo."""
    try:
        with open(mountinfo, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            if len(fields) >= 5:
                return Path(_unescape(fields[4]))
    return None


def own_cgroup(proc_cgroup: str = "/proc/self/cgroup") -> Optional[str]:
    """This process's cgroup v2 path (the '0::' line), e.g. '/' or '/user.slice/x.scope'."""
    try:
        with open(proc_cgroup, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def cgroup_parent() -> Optional[Path]:
    """The directory under which this pilot makes its payloads' cgroups (its own cgroup), if any."""
    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        return None
    parent = mount / own.lstrip("/")
    return parent if parent.is_dir() else None


# --- the trackers ---------------------------------------------------------------------------------
class Tracker(ABC):
    """The processes of one payload."""

    kind: str = ""

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
        """The tree's memory from the kernel's accounting, where there is one; None: sum the processes."""
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
        if denied:
            log.error("cannot signal payload process(es) %s: permission denied", sorted(denied))
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
        """Collect the zombies of payload processes re-parented to the pilot (a subreaper)."""
        for pid in list(self._seen):
            if pid == exclude:
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

    _seen: set[int]
    reaped_cpu: float = 0.0  # CPU seconds of the orphans the pilot reaped (and of what they reaped)
    leader: int = -1
    started: float = 0.0


@dataclass
class CgroupTracker(Tracker):
    path: Path
    kind: str = "cgroup"
    _procs_fd: int = -1
    _seen: set[int] = field(default_factory=set)

    @classmethod
    def create(cls, parent: Path, name: str) -> CgroupTracker:
        """A new cgroup `name` under `parent`; OSError when the node does not allow it."""
        path = parent / name
        os.mkdir(path, 0o755)
        try:
            if not (path / "cgroup.kill").exists():  # Linux < 5.14: no atomic end of a whole cgroup
                raise OSError(errno.ENOTSUP, "cgroup.kill not supported by this kernel", str(path))
            fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            os.rmdir(path)
            raise
        return cls(path=path, _procs_fd=fd)

    def preexec(self) -> Optional[Callable[[], None]]:
        fd = self._procs_fd

        def enter() -> None:  # in the child, before exec: every descendant is born inside
            os.write(fd, b"0")

        return enter

    def attach(self, leader: int, started: float) -> None:
        super().attach(leader, started)
        if self._procs_fd >= 0:
            os.close(self._procs_fd)
            self._procs_fd = -1

    def pids(self) -> set[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return set()
        found = {int(word) for word in text.split()}
        self._seen |= found
        return found

    def memory_bytes(self) -> Optional[int]:
        try:
            return int((self.path / "memory.current").read_text())
        except (OSError, ValueError):
            return None  # no memory controller here: the monitor sums the processes

    def cpu_seconds(self) -> Optional[float]:
        try:
            text = (self.path / "cpu.stat").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, number = line.partition(" ")
            if key == "usage_usec" and number.strip().isdigit():
                return int(number) / 1e6
        return None

    def kill_all(self, exclude: int = -1) -> None:
        self.pids()  # remember who was there, to reap orphans re-parented to the pilot
        (self.path / "cgroup.kill").write_text("1")

    def close(self) -> None:
        if self._procs_fd >= 0:
            os.close(self._procs_fd)
            self._procs_fd = -1
        if not self.wait_empty(10):
            log.error("payload cgroup %s still has processes %s after cgroup.kill", self.path, sorted(self.pids()))
            return
        try:
            os.rmdir(self.path)
        except OSError as exc:
            log.error("payload cgroup %s not removed: %s", self.path, exc.strerror)


@dataclass
class SubreaperTracker(Tracker):
    """The payload's first process, its descendants, and any orphan re-parented to the pilot since the
    payload started (the pilot being a child subreaper); processes that were there before are not it."""

    kind: str = "subreaper"
    _before: set[tuple[int, float]] = field(default_factory=set)
    _known: dict[int, float] = field(default_factory=dict)  # pid -> start time, as seen by a walk
    _seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._before = {(p.pid, _created(p)) for p in _children()}

    def attach(self, leader: int, started: float) -> None:
        super().attach(leader, started)
        self._known[leader] = _created_pid(leader)

    def pids(self) -> set[int]:
        found: dict[int, psutil.Process] = {}
        roots = [c for c in _children() if (c.pid, _created(c)) not in self._before
                 and _created(c) >= self.started - 1]
        for root in roots:
            found[root.pid] = root
            try:
                found.update((p.pid, p) for p in root.children(recursive=True))
            except psutil.Error:
                pass
        for pid, created in list(self._known.items()):  # what a walk saw, if it escaped the pilot's tree
            if pid not in found and _same(pid, created):
                found[pid] = psutil.Process(pid)
        alive = set()
        for pid, p in found.items():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    self._seen.add(pid)  # an orphan that ended: reap_orphans collects it (and its CPU time)
                    continue
            except psutil.Error:
                continue
            self._known.setdefault(pid, _created(p))
            alive.add(pid)
        self._seen |= alive
        return alive

    def kill_all(self, exclude: int = -1) -> None:
        for _ in range(5):  # a fork between the walk and the kill is caught by the next walk
            left = self.pids() - {exclude}
            if not left:
                return
            self.signal(signal.SIGKILL, exclude)
            self.wait_empty(2, exclude)


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


def _created(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.Error:
        return 0.0


def _created_pid(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return time.time()


def _same(pid: int, created: float) -> bool:
    """The process `pid` still runs and is the one seen before (its start time agrees)."""
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - created) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def remove_empty_leftovers(parent: Path) -> None:
    """Payload cgroups of pilots that are gone and that hold no process any more are removed (an rmdir
    of an empty cgroup ends nothing; one that still has processes is left to recovery)."""
    try:
        names = [entry.name for entry in os.scandir(parent) if entry.name.startswith(CGROUP_PREFIX)]
    except OSError:
        return
    for name in names:
        owner = name[len(CGROUP_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not psutil.pid_exists(int(owner)):
            try:
                os.rmdir(parent / name)
            except OSError:
                pass


def new_tracker(label: str, use_cgroup: bool = True) -> Tracker:
    """A cgroup for the payload where the node allows one, else the subreaper tracking; says which."""
    if use_cgroup:
        parent = cgroup_parent()
        if parent is not None:
            remove_empty_leftovers(parent)
            name = f"{CGROUP_PREFIX}{os.getpid()}-{next(_serial)}-{label}"
            try:
                tracker = CgroupTracker.create(parent, name)
                log.info("payload processes tracked in cgroup %s", tracker.path)
                return tracker
            except OSError as exc:
                log.info("no cgroup for the payload under %s (%s): child-subreaper tracking", parent,
                         exc.strerror or exc)
        else:
            log.info("no writable cgroup v2 hierarchy: child-subreaper tracking")
    return SubreaperTracker()


def end_cgroup(path: Path, timeout: float = 10.0) -> bool:
    """End what is left in a payload cgroup a dead pilot recorded (for recovery), then remove it.
    Only a directory named like this pilot's payload cgroups, under the cgroup v2 mount, is touched."""
    mount = cgroup2_mount()
    path = Path(path)
    if mount is None or not path.name.startswith(CGROUP_PREFIX) or mount not in path.parents:
        log.error("not a payload cgroup of this pilot: %s", path)
        return False
    if not path.is_dir():
        return True
    try:
        (path / "cgroup.kill").write_text("1")
    except OSError as exc:
        log.error("cannot end payload cgroup %s: %s", path, exc.strerror)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.05)
    log.error("payload cgroup %s not emptied within %.0f s", path, timeout)
    return False
