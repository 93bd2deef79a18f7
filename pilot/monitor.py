"""Checks made while the payload runs, each with its own interval and PanDA error code.

The decisions are small pure functions (easy to test); Monitor runs the ones that are due and keeps
the figures (peak memory) for the final report. `watch()` is the main thread's wait: it sleeps until the
payload ends, a check is due, or somebody (a signal, the heartbeat) asks to stop the job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil

from pilot.config import QueueConfig
from pilot.control import Control
from pilot.errors import ErrorCode, PilotError
from pilot.fsutil import newest_mtime, tree_size
from pilot.job import Job
from pilot.layout import PILOT_OWN, STDOUT
from pilot.node import free_mb
from pilot.payload import Payload

log = logging.getLogger(__name__)
MB = 2**20


@dataclass
class Limits:
    looping: float  # s without a change in the work dir
    memory_mb: float  # PSS of the whole tree; 0: unchecked
    workdir_mb: int  # 0: unchecked
    min_free_mb: int  # 0: unchecked
    stdout_mb: int  # 0: unchecked
    deadline: Optional[float]  # wall-clock time by which the payload must be stopped

    @classmethod
    def for_job(cls, job: Job, queue: QueueConfig, pilot_deadline: Optional[float], cores: int = 0) -> Limits:
        """The memory limit is per core: (minRamCount, else the queue's maxrss) x cores x memory_grace."""
        if job.max_cpu_count > 0:
            looping = max(job.max_cpu_count, queue.looping_limit_min)
        else:
            looping = queue.looping_limit_analysis if job.is_analysis else queue.looping_limit_production
        ram = (job.min_ram_count or queue.maxrss) * (cores or job.core_count)
        deadline = pilot_deadline - queue.time_margin if pilot_deadline else None
        return cls(
            looping=looping,
            memory_mb=ram * queue.memory_grace,
            workdir_mb=job.max_disk_count or queue.maxwdir,
            min_free_mb=queue.min_free_disk,
            stdout_mb=queue.max_stdout,
            deadline=deadline,
        )


# --- decisions --------------------------------------------------------------------------------------
def looping_verdict(last_change: float, now: float, limit: float) -> Optional[PilotError]:
    idle = now - last_change
    if limit > 0 and idle > limit:
        return PilotError(ErrorCode.LOOPING, f"looping job: no file in the work dir changed for {idle:.0f} s "
                                             f"(limit {limit:.0f} s)")
    return None


def memory_verdict(pss_mb: float, limit_mb: float) -> Optional[PilotError]:
    if limit_mb > 0 and pss_mb > limit_mb:
        return PilotError(ErrorCode.OUT_OF_MEMORY, f"payload PSS {pss_mb:.0f} MB exceeds the limit {limit_mb:.0f} MB")
    return None


def workdir_verdict(size_mb: float, limit_mb: int) -> Optional[PilotError]:
    if limit_mb > 0 and size_mb > limit_mb:
        return PilotError(ErrorCode.WORKDIR_TOO_LARGE, f"work dir is {size_mb:.0f} MB, limit {limit_mb} MB")
    return None


def free_disk_verdict(free: int, minimum: int) -> Optional[PilotError]:
    if minimum > 0 and free < minimum:
        return PilotError(ErrorCode.NO_LOCAL_SPACE, f"only {free} MB free under the work dir, need {minimum} MB")
    return None


def stdout_verdict(size_mb: float, limit_mb: int) -> Optional[PilotError]:
    if limit_mb > 0 and size_mb > limit_mb:
        return PilotError(ErrorCode.STDOUT_TOO_BIG, f"payload stdout is {size_mb:.0f} MB, limit {limit_mb} MB")
    return None


def time_verdict(now: float, deadline: Optional[float]) -> Optional[PilotError]:
    if deadline is not None and now >= deadline:
        return PilotError(ErrorCode.REACHED_MAX_TIME, "the pilot's time is running out: payload stopped")
    return None


# --- the monitor ------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    interval: float
    run: Callable[[float], Optional[PilotError]]
    due: float = 0.0
    ramp: float = 0.0  # > 0: the first run comes after this many seconds, the gap doubling up to `interval`

    def next_gap(self) -> float:
        if self.ramp <= 0:
            return self.interval
        gap, self.ramp = self.ramp, self.ramp * 2
        if self.ramp >= self.interval:
            self.ramp = 0.0
        return min(gap, self.interval)


@dataclass
class Monitor:
    payload: Payload
    workdir: Path
    limits: Limits
    queue: QueueConfig
    clock: Callable[[], float] = time.time
    max_pss_kb: int = 0
    max_rss_kb: int = 0
    max_vmem_kb: int = 0
    max_swap_kb: int = 0
    checks: list[Check] = field(default_factory=list)

    def __post_init__(self) -> None:
        q = self.queue
        now = self.clock()
        self.checks = [
            Check("time", 1.0 if self.limits.deadline else 0, self._time),
            # early samples too: a short payload's memory is measured, not left to the pilot's own figures
            Check("memory", q.memory_check_interval, self._memory, ramp=q.memory_first_check),
            Check("stdout", q.stdout_check_interval if self.limits.stdout_mb else 0, self._stdout),
            Check("disk", q.disk_check_interval, self._disk),
            Check("looping", q.looping_check_interval if self.limits.looping else 0, self._looping),
        ]
        self.checks = [c for c in self.checks if c.interval > 0]
        for check in self.checks:
            check.due = now + check.next_gap()

    def seconds_to_next(self) -> float:
        now = self.clock()
        return max(0.0, min((c.due for c in self.checks), default=now + 3600) - now)

    def run_due(self) -> Optional[PilotError]:
        now = self.clock()
        for check in self.checks:
            if now >= check.due:
                check.due = now + check.next_gap()
                verdict = check.run(now)
                if verdict is not None:
                    log.warning("%s check: %s", check.name, verdict.diag)
                    return verdict
        return None

    def _time(self, now: float) -> Optional[PilotError]:
        return time_verdict(now, self.limits.deadline)

    def _memory(self, now: float) -> Optional[PilotError]:
        pss = rss = vms = swap = 0
        procs = self.payload.processes()
        unseen = []
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.AccessDenied:  # a payload under another account, and a pilot that is not root
                unseen.append(p.pid)
                continue
            except psutil.Error:
                continue
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
            vms += info.vms
            swap += getattr(info, "swap", 0)
        total = self.payload.memory_bytes() if hasattr(self.payload, "memory_bytes") else None
        peak = self.payload.memory_peak_bytes() if hasattr(self.payload, "memory_peak_bytes") else None
        if total is not None:  # the cgroup's own accounting covers every process, whoever owns it
            pss, rss = max(pss, total), max(rss, total, peak or 0)  # the peak: highs between two samples too
        elif unseen:
            log.error("memory check cannot read payload process(es) %s: access denied; their memory is "
                      "not counted", unseen)
        self.max_pss_kb = max(self.max_pss_kb, pss // 1024)
        self.max_rss_kb = max(self.max_rss_kb, rss // 1024)
        self.max_vmem_kb = max(self.max_vmem_kb, vms // 1024)
        self.max_swap_kb = max(self.max_swap_kb, swap // 1024)
        return memory_verdict(pss / MB, self.limits.memory_mb)

    def _stdout(self, now: float) -> Optional[PilotError]:
        try:
            size = os.stat(self.workdir / STDOUT).st_size
        except FileNotFoundError:
            return None
        return stdout_verdict(size / MB, self.limits.stdout_mb)

    def _disk(self, now: float) -> Optional[PilotError]:
        return free_disk_verdict(free_mb(self.workdir), self.limits.min_free_mb) or workdir_verdict(
            tree_size(self.workdir) / MB, self.limits.workdir_mb
        )

    def _looping(self, now: float) -> Optional[PilotError]:
        if not os.access(self.workdir, os.R_OK | os.X_OK):  # a payload account's dir a non-root pilot cannot see
            log.error("looping check cannot read the payload's work dir %s: its files are not seen", self.workdir)
        last = max(newest_mtime(self.workdir, ignore=PILOT_OWN), self.payload.started)
        return looping_verdict(last, now, self.limits.looping)


def watch(payload: Payload, monitor: Monitor, control: Control) -> Optional[PilotError]:
    """Wait for the payload to end; returns why it was killed, or None when it ended by itself."""
    while True:
        control.wake.wait(timeout=monitor.seconds_to_next())
        control.wake.clear()
        if payload.exited.is_set():
            return None
        reason = control.job_kill or monitor.run_due()
        if reason is not None:
            log.warning("stopping the payload: %s", reason.diag)
            payload.kill(monitor.queue.kill_grace)
            return reason
