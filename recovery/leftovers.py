"""What is left of a dead pilot's payload: find it by the identity the journal recorded, and end it.

Only processes that are provably that payload's are signalled:
- its leader, when a process of that PID runs with the recorded start time;
- the members of its session and process group: the kernel never hands out a PID while a session or
  group of that number has members, so a process whose session (or group) is the recorded number
  belongs to the payload unless a process of that very PID now runs with another start time (then
  the number was freed and reused, and nothing is signalled); members must also have started no
  earlier than the payload did;
- its cgroup, where the payload ran in one (recorded by pilot/proctrack.py, which ends it as a whole).
Nothing else on the node is ever signalled, and never this pilot itself.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Optional

import psutil

from pilot.proctrack import end_cgroup

log = logging.getLogger(__name__)

START_TOLERANCE = 0.05  # s: the same process reads the same start time (clock ticks); a reused PID does not


def _start(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same(pid: int, start: float) -> bool:
    found = _start(pid)
    return found is not None and abs(found - start) < START_TOLERANCE


def payload_processes(identity: dict[str, Any]) -> list[psutil.Process]:
    """The processes of the recorded payload that still run (zombies excluded)."""
    pid, start = identity.get("pid"), identity.get("start_time")
    if not isinstance(pid, int) or not isinstance(start, (int, float)) or pid <= 1:
        return []
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    if _same(pid, start) and pid != me:
        found[pid] = psutil.Process(pid)
    leader_start = _start(pid)
    reused = leader_start is not None and abs(leader_start - start) >= START_TOLERANCE
    numbers = {n for n in (identity.get("sid"), identity.get("pgid")) if isinstance(n, int) and n > 1}
    if numbers and not reused:
        for other in psutil.pids():
            if other in found or other == me:
                continue
            try:
                if os.getsid(other) not in numbers and os.getpgid(other) not in numbers:
                    continue
                proc = psutil.Process(other)
                if proc.create_time() + START_TOLERANCE >= start:
                    found[other] = proc
            except (OSError, psutil.Error):
                continue
    alive = []
    for proc in found.values():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            pass
    return alive


def end_payload(identity: dict[str, Any], timeout: float = 10.0) -> list[int]:
    """SIGKILL what is left of the payload (its cgroup first, where it had one); returns the PIDs that
    still run after `timeout` seconds (normally none)."""
    cgroup = identity.get("cgroup")
    if isinstance(cgroup, str) and cgroup:
        _end_cgroup(cgroup)
    procs = payload_processes(identity)
    if not procs:
        return []
    log.warning("killing %d leftover process(es) of a dead pilot's payload: %s", len(procs), [p.pid for p in procs])
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive]


def _end_cgroup(path: str) -> None:
    """The payload's cgroup ends as a whole (cgroup.kill), then goes; a cgroup that cannot be ended is
    logged by proctrack, and its processes are still ended one by one."""
    end_cgroup(Path(path))
