"""Monitor decisions (pure verdicts), the limits a job gets, and the scheduling of checks."""

from __future__ import annotations

import os

import psutil
import pytest

from pilot.config import QueueConfig
from pilot.errors import ErrorCode
from pilot.job import parse_job
from pilot.monitor import (
    Limits,
    Monitor,
    free_disk_verdict,
    looping_verdict,
    memory_verdict,
    stdout_verdict,
    time_verdict,
    workdir_verdict,
)
from pilot.payload import STDOUT

MB = 2**20


# --- verdicts: at, below and above the limit --------------------------------------------------------
@pytest.mark.parametrize("verdict, code, limit, below, above", [
    (lambda v, lim: looping_verdict(0.0, v, lim), ErrorCode.LOOPING, 3600, 3599, 3601),
    (memory_verdict, ErrorCode.OUT_OF_MEMORY, 4000, 3999, 4000.5),
    (workdir_verdict, ErrorCode.WORKDIR_TOO_LARGE, 5000, 4999, 5000.1),
    (stdout_verdict, ErrorCode.STDOUT_TOO_BIG, 2048, 2047, 2049),
])
def test_upper_limit_verdicts(verdict, code, limit, below, above):
    assert verdict(below, limit) is None
    assert verdict(limit, limit) is None  # at the limit: still allowed
    error = verdict(above, limit)
    assert error is not None and error.code == code
    assert error.diag


@pytest.mark.parametrize("verdict", [
    lambda v, lim: looping_verdict(0.0, v, lim), memory_verdict, workdir_verdict, stdout_verdict,
])
def test_zero_limit_disables_the_check(verdict):
    assert verdict(10**12, 0) is None


def test_looping_verdict_measures_from_last_change():
    assert looping_verdict(last_change=1000, now=1000 + 600, limit=600) is None
    assert looping_verdict(last_change=1000, now=1000 + 601, limit=600).code == ErrorCode.LOOPING == 1150


def test_free_disk_verdict():
    assert free_disk_verdict(201, 200) is None
    assert free_disk_verdict(200, 200) is None  # exactly the minimum: enough
    error = free_disk_verdict(199, 200)
    assert error.code == ErrorCode.NO_LOCAL_SPACE == 1098
    assert free_disk_verdict(0, 0) is None  # minimum 0: unchecked


def test_time_verdict():
    assert time_verdict(999.0, 1000.0) is None
    assert time_verdict(1000.0, 1000.0).code == ErrorCode.REACHED_MAX_TIME == 1213
    assert time_verdict(1001.0, 1000.0).code == ErrorCode.REACHED_MAX_TIME
    assert time_verdict(10**12, None) is None


def test_verdict_codes_are_panda_numbers():
    assert memory_verdict(2, 1).code == 1212
    assert workdir_verdict(2, 1).code == 1104
    assert stdout_verdict(2, 1).code == 1106


# --- Limits.for_job ---------------------------------------------------------------------------------
QUEUE = QueueConfig(looping_limit_production=43200, looping_limit_analysis=10800, looping_limit_min=7200,
                    memory_grace=2.0, maxrss=1000, maxwdir=8000, min_free_disk=300, max_stdout=1024,
                    time_margin=600)


@pytest.fixture
def limits_for(job_dict):
    def make(queue=QUEUE, deadline=None, **fields):
        return Limits.for_job(parse_job(job_dict(**fields)), queue, deadline)
    return make


def test_looping_from_max_cpu_count(limits_for):
    assert limits_for(maxCpuCount="20000").looping == 20000


def test_looping_max_cpu_count_has_a_minimum(limits_for):
    assert limits_for(maxCpuCount="60").looping == 7200


@pytest.mark.parametrize("transformation, label, expected", [
    ("Reco_tf.py", "managed", 43200),
    ("https://pandaserver/trf/user/runGen", "user", 10800),
    ("Reco_tf.py", "user", 10800),
])
def test_looping_default_for_analysis_and_production(limits_for, transformation, label, expected):
    assert limits_for(transformation=transformation, prodSourceLabel=label, maxCpuCount="NULL").looping == expected


def test_memory_from_min_ram_count_times_cores_times_grace(limits_for):
    """minRamCount is per core, as the earlier pilots read it: a multi-core job's limit scales."""
    assert limits_for(minRamCount="2500", coreCount="8").memory_mb == 2500 * 8 * 2.0
    assert limits_for(minRamCount="2500", coreCount="1").memory_mb == 2500 * 2.0


def test_memory_from_queue_maxrss_per_core(limits_for):
    """No minRamCount: the queue's maxrss (MB per core) times the job's cores stands in for it."""
    assert limits_for(minRamCount="NULL", coreCount="4").memory_mb == 1000 * 4 * 2.0


def test_memory_unchecked_without_any_figure(limits_for):
    assert limits_for(QueueConfig(maxrss=0), minRamCount="NULL").memory_mb == 0


def test_workdir_from_max_disk_count_or_queue(limits_for):
    assert limits_for(maxDiskCount="12000").workdir_mb == 12000
    assert limits_for(maxDiskCount="NULL").workdir_mb == 8000
    assert limits_for(QueueConfig(maxwdir=0), maxDiskCount="NULL").workdir_mb == 0


def test_other_limits_come_from_the_queue(limits_for):
    limits = limits_for()
    assert (limits.min_free_mb, limits.stdout_mb) == (300, 1024)


def test_deadline_is_the_pilot_deadline_minus_margin(limits_for):
    assert limits_for(deadline=50_000.0).deadline == 50_000.0 - 600
    assert limits_for(deadline=None).deadline is None


# --- Monitor: which checks run, and when ------------------------------------------------------------
class FakePayload:
    started = 0.0

    def __init__(self, processes=()):
        self._processes = list(processes)

    def processes(self):
        return list(self._processes)


INTERVALS = QueueConfig(memory_check_interval=60, stdout_check_interval=60, disk_check_interval=300,
                        looping_check_interval=600, min_free_disk=0, memory_first_check=0)


def limits(**kw) -> Limits:
    values = dict(looping=3600, memory_mb=0, workdir_mb=0, min_free_mb=0, stdout_mb=100, deadline=None)
    values.update(kw)
    return Limits(**values)


def monitor(tmp_path, clock, queue=INTERVALS, payload=None, **kw) -> Monitor:
    return Monitor(payload or FakePayload(), tmp_path, limits(**kw), queue, clock=clock)


def recorded(mon: Monitor) -> list[str]:
    """Replace each check with a recorder; returns the list the names of run checks go into."""
    ran: list[str] = []
    for check in mon.checks:
        check.run = lambda now, name=check.name: ran.append(name)
    return ran


def test_checks_present_depend_on_limits(tmp_path, clock):
    every = monitor(tmp_path, clock, deadline=clock() + 10_000)
    assert {c.name for c in every.checks} == {"time", "memory", "stdout", "disk", "looping"}
    fewer = monitor(tmp_path, clock, deadline=None, stdout_mb=0, looping=0)
    assert {c.name for c in fewer.checks} == {"memory", "disk"}


def test_seconds_to_next(tmp_path, clock):
    mon = monitor(tmp_path, clock)
    assert mon.seconds_to_next() == 60
    clock.advance(59.5)
    assert mon.seconds_to_next() == pytest.approx(0.5)
    clock.advance(100)
    assert mon.seconds_to_next() == 0.0  # overdue: never negative


def test_seconds_to_next_with_a_deadline_is_one_second(tmp_path, clock):
    assert monitor(tmp_path, clock, deadline=clock() + 10_000).seconds_to_next() == 1.0


def test_seconds_to_next_without_checks(tmp_path, clock):
    queue = QueueConfig(memory_check_interval=0, disk_check_interval=0)
    mon = monitor(tmp_path, clock, queue=queue, stdout_mb=0, looping=0)
    assert mon.checks == []
    assert mon.seconds_to_next() == 3600


def test_run_due_runs_only_checks_that_are_due(tmp_path, clock):
    mon = monitor(tmp_path, clock)
    ran = recorded(mon)
    assert mon.run_due() is None
    assert ran == []  # nothing due at the start
    clock.advance(59)
    mon.run_due()
    assert ran == []
    clock.advance(1)  # t = 60
    mon.run_due()
    assert sorted(ran) == ["memory", "stdout"]
    ran.clear()
    mon.run_due()
    assert ran == []  # just ran: not due again yet
    clock.advance(240)  # t = 300
    mon.run_due()
    assert sorted(ran) == ["disk", "memory", "stdout"]
    ran.clear()
    clock.advance(300)  # t = 600
    mon.run_due()
    assert sorted(ran) == ["disk", "looping", "memory", "stdout"]


def test_a_late_tick_runs_a_check_once_and_reschedules_from_now(tmp_path, clock):
    mon = monitor(tmp_path, clock)
    ran = recorded(mon)
    clock.advance(1000)
    mon.run_due()
    assert ran.count("memory") == 1
    assert mon.seconds_to_next() == 60


def test_run_due_returns_the_first_verdict(tmp_path, clock):
    start = clock()
    mon = monitor(tmp_path, clock, deadline=start + 30)
    clock.advance(1)
    assert mon.run_due() is None
    clock.advance(29)  # at the deadline
    verdict = mon.run_due()
    assert verdict is not None and verdict.code == ErrorCode.REACHED_MAX_TIME


def test_stdout_check(tmp_path, clock):
    mon = monitor(tmp_path, clock, stdout_mb=1)
    clock.advance(60)
    assert mon.run_due() is None  # no stdout file yet
    with open(tmp_path / STDOUT, "wb") as handle:
        handle.truncate(2 * MB)
    clock.advance(60)
    assert mon.run_due().code == ErrorCode.STDOUT_TOO_BIG


def test_disk_check_workdir_size(tmp_path, clock):
    mon = monitor(tmp_path, clock, workdir_mb=1)
    (tmp_path / "small").write_bytes(b"x" * 1000)
    clock.advance(300)
    assert mon.run_due() is None
    with open(tmp_path / "big", "wb") as handle:
        handle.truncate(2 * MB)
    clock.advance(300)
    assert mon.run_due().code == ErrorCode.WORKDIR_TOO_LARGE


def test_disk_check_free_space(tmp_path, clock):
    mon = monitor(tmp_path, clock, min_free_mb=10**12)
    clock.advance(300)
    assert mon.run_due().code == ErrorCode.NO_LOCAL_SPACE


def test_looping_check_uses_newest_mtime(tmp_path, clock):
    (tmp_path / "out.txt").write_text("x")
    old = clock() - 10_000
    os.utime(tmp_path / "out.txt", (old, old))
    os.utime(tmp_path, (old, old))
    mon = monitor(tmp_path, clock, looping=3600)
    clock.advance(600)
    assert mon.run_due().code == ErrorCode.LOOPING
    (tmp_path / "out.txt").write_text("progress")  # a fresh change: the job is alive
    os.utime(tmp_path / "out.txt", (clock(), clock()))
    clock.advance(600)
    assert mon.run_due() is None


def test_the_pilots_own_files_are_no_sign_of_life(tmp_path, clock):
    old = clock() - 10_000
    (tmp_path / "out.txt").write_text("x")
    os.utime(tmp_path / "out.txt", (old, old))
    mon = monitor(tmp_path, clock, looping=3600)
    clock.advance(600)
    # heartbeats rewrite the journal (through a temporary file) and the pilot logs: not the payload
    for name in ("journal.json", "pilot.log", ".journal.json.abc.tmp"):
        (tmp_path / name).write_text("pilot")
        os.utime(tmp_path / name, (clock(), clock()))
    os.utime(tmp_path, (clock(), clock()))
    assert mon.run_due().code == ErrorCode.LOOPING


def test_memory_check_measures_and_keeps_peaks(tmp_path, clock):
    mon = monitor(tmp_path, clock, payload=FakePayload([psutil.Process()]), memory_mb=1)
    clock.advance(60)
    verdict = mon.run_due()
    assert verdict is not None and verdict.code == ErrorCode.OUT_OF_MEMORY
    assert mon.max_rss_kb > 1024 and mon.max_pss_kb > 0 and mon.max_vmem_kb >= mon.max_rss_kb


def test_memory_check_without_processes(tmp_path, clock):
    mon = monitor(tmp_path, clock, memory_mb=1)
    clock.advance(60)
    assert mon.run_due() is None
    assert mon.max_pss_kb == 0


def test_memory_is_sampled_early_then_at_its_interval(tmp_path, clock):
    """A short payload's memory is measured: samples after 0.5, 1, 2, ... s, then every interval."""
    mon = monitor(tmp_path, clock, queue=QueueConfig(memory_check_interval=5, memory_first_check=0.5,
                                                     stdout_check_interval=0, min_free_disk=0))
    ran = recorded(mon)
    times = []
    for _ in range(6):
        clock.advance(mon.seconds_to_next())
        mon.run_due()
        times.append(clock.now - 1_000_000.0)
    assert ran.count("memory") == 6 and times == [0.5, 1.5, 3.5, 7.5, 12.5, 17.5]
