"""cgroup v2 for the payload: where the node allows it (cgroup v2 writable by the pilot, as root or in a
delegated subtree), every payload runs in a cgroup of its own, entered before exec, so every descendant
is born inside it whatever it does (double forks, setsid, a change of uid). Its processes are the
cgroup's; it is ended as a whole with `cgroup.kill`, which no fork can outrun; its memory is the cgroup's
(`memory.current`, `memory.peak`) where a memory controller is enabled. The hierarchy is found from
/proc/self/mountinfo (also a hybrid layout's /sys/fs/cgroup/unified), never assumed. The cgroup's path goes
into the journal before the payload starts, so a later pilot can end it (`end_cgroup`)."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil

from pilot.tracker import Tracker

log = logging.getLogger(__name__)

CGROUP_PREFIX = "pandapilot-"
MAX_COUNTER = 64  # bytes of a cgroup counter file


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
        return self._counter("memory.current")  # None: no memory controller here, the monitor sums the processes

    def memory_peak_bytes(self) -> Optional[int]:
        return self._counter("memory.peak")  # Linux >= 5.19, with the memory controller

    def _counter(self, name: str) -> Optional[int]:
        try:
            with open(self.path / name, "rb") as handle:
                return int(handle.read(MAX_COUNTER))
        except (OSError, ValueError):
            return None

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
