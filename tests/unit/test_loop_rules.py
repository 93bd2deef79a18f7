"""The loop's stop rules (each alone) and the wait after a 'no job' answer."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pilot import loop
from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.base import DispatcherError, FailureKind
from pilot.jobrun import PilotContext
from pilot.loop import LoopState, no_job_wait, stop_reason
from pilot.node import NodeInfo

START = 1_000_000.0


def context(tmp_path: Path, deadline=None, queue: QueueConfig | None = None, **config) -> PilotContext:
    """A context in which no rule holds unless the test sets one."""
    settings = dict(max_jobs=0, max_failures=0, max_no_job=0, stop_file=None)
    settings.update(config)
    cfg = PilotConfig(queue="Q", dispatcher=str(tmp_path), workdir=tmp_path, **settings)
    return PilotContext(
        config=cfg,
        queue=queue or QueueConfig(name="Q"),
        node=NodeInfo(host="node01", cores=4, memory_mb=8000, disk_free_mb=10_000, cpu_mhz=2000),
        dispatcher=None,
        registry=None,
        control=Control(),
        deadline=deadline,
    )


def state(**counts) -> LoopState:
    return LoopState(started=START, **counts)


def test_nothing_holds(tmp_path):
    ctx = context(tmp_path, max_jobs=5, max_failures=3, max_no_job=3, stop_file=tmp_path / "STOP",
                  deadline=START + 10_000, queue=QueueConfig(timefloor=60, time_margin=600))
    assert stop_reason(ctx, state(jobs=4, failures_in_row=2, no_job_in_row=2), START + 100) is None


def test_signal(tmp_path):
    ctx = context(tmp_path)
    ctx.control.on_signal(signal.SIGTERM)
    assert stop_reason(ctx, state(), START) == f"signal {int(signal.SIGTERM)}"


def test_softkill(tmp_path):
    ctx = context(tmp_path)
    ctx.control.softkill = True
    assert "soft kill" in stop_reason(ctx, state(), START)


def test_stop_file(tmp_path):
    stop = tmp_path / "STOP"
    ctx = context(tmp_path, stop_file=stop)
    assert stop_reason(ctx, state(), START) is None
    stop.touch()
    assert "stop file" in stop_reason(ctx, state(), START)


def test_max_jobs(tmp_path):
    ctx = context(tmp_path, max_jobs=2)
    assert stop_reason(ctx, state(jobs=1), START) is None
    assert "maximum of 2" in stop_reason(ctx, state(jobs=2), START)


def test_max_jobs_zero_is_unlimited(tmp_path):
    assert stop_reason(context(tmp_path, max_jobs=0), state(jobs=10_000), START) is None


def test_failures_in_a_row(tmp_path):
    ctx = context(tmp_path, max_failures=3)
    assert stop_reason(ctx, state(jobs=5, failures_in_row=2), START) is None
    assert "3 failed jobs in a row" in stop_reason(ctx, state(jobs=5, failures_in_row=3), START)


def test_no_job_limit(tmp_path):
    ctx = context(tmp_path, max_no_job=3)
    assert stop_reason(ctx, state(no_job_in_row=2), START) is None
    assert "no job in 3" in stop_reason(ctx, state(no_job_in_row=3), START)


def test_time_floor_only_after_a_job(tmp_path):
    ctx = context(tmp_path, queue=QueueConfig(timefloor=10))
    later = START + 10 * 60
    assert stop_reason(ctx, state(jobs=0), later + 3600) is None  # no job yet: keep asking
    assert stop_reason(ctx, state(jobs=1), later - 1) is None
    assert "time floor of 10 min" in stop_reason(ctx, state(jobs=1), later)


def test_deadline_minus_margin(tmp_path):
    deadline = START + 5000
    ctx = context(tmp_path, deadline=deadline, queue=QueueConfig(time_margin=600))
    assert stop_reason(ctx, state(), deadline - 601) is None
    assert "lifetime" in stop_reason(ctx, state(), deadline - 600)
    assert "lifetime" in stop_reason(ctx, state(), deadline + 1)


def test_stop_reason_changes_nothing(tmp_path):
    ctx = context(tmp_path, max_jobs=1)
    st = state(jobs=1, failures_in_row=1, no_job_in_row=1)
    stop_reason(ctx, st, START)
    assert (st.jobs, st.failures_in_row, st.no_job_in_row, st.started) == (1, 1, 1, START)
    assert ctx.control.signum is None and not ctx.control.softkill


# --- waiting after 'no job' -------------------------------------------------------------------------
def test_no_job_wait_grows_and_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.random, "uniform", lambda a, b: b)  # no jitter
    cfg = PilotConfig(queue="Q", dispatcher=str(tmp_path), workdir=tmp_path, no_job_wait=10, no_job_wait_max=100)
    assert [no_job_wait(cfg, n) for n in range(0, 8)] == [10, 10, 20, 40, 80, 100, 100, 100]


def test_no_job_wait_jitter_stays_within_bounds(tmp_path):
    cfg = PilotConfig(queue="Q", dispatcher=str(tmp_path), workdir=tmp_path, no_job_wait=10, no_job_wait_max=100)
    for misses in (1, 3, 50):
        base = min(10 * 2 ** (misses - 1), 100)
        waits = [no_job_wait(cfg, misses) for _ in range(200)]
        assert all(0.8 * base <= w <= base for w in waits)
        assert len(set(waits)) > 1  # jitter: not all pilots ask again at the same instant


@pytest.mark.parametrize("misses", [1000, 1100, 5000])
def test_no_job_wait_does_not_overflow(tmp_path, misses, monkeypatch):
    """With --max-no-job 0 (no limit) a pilot may see thousands of 'no job' answers in a row;
    the cli hands floats (argparse type=float)."""
    monkeypatch.setattr(loop.random, "uniform", lambda a, b: b)
    cfg = PilotConfig(queue="Q", dispatcher=str(tmp_path), workdir=tmp_path, no_job_wait=60.0,
                      no_job_wait_max=600.0)
    assert no_job_wait(cfg, misses) == 600.0


class RecordingEvent:
    """Stands in for control.wake: records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, timeout=None) -> bool:
        self.waits.append(timeout)
        return False

    def clear(self) -> None:
        pass

    def set(self) -> None:
        pass

    def is_set(self) -> bool:
        return False


class NoJobDispatcher:
    name = "nojob"

    def __init__(self, ctx: PilotContext, answers: int) -> None:
        self.ctx, self.answers, self.asked = ctx, answers, 0

    def get_job(self, request):
        self.asked += 1
        if self.asked >= self.answers:
            self.ctx.control.softkill = True  # ends the loop after this answer
        return None


@pytest.mark.parametrize("max_no_job", [0, 10])
def test_pilot_waits_between_no_job_answers(tmp_path, max_no_job):
    """--max-no-job 0 means no limit (stop_reason ignores it); the pilot must still back off, not spin."""
    ctx = context(tmp_path, max_no_job=max_no_job, no_job_wait=10.0, no_job_wait_max=100.0)
    ctx.control.stopping = RecordingEvent()
    ctx.dispatcher = NoJobDispatcher(ctx, answers=5)
    exit_code = loop.Pilot(ctx, clock=lambda: START).run()
    assert ctx.dispatcher.asked == 5
    assert len(ctx.control.stopping.waits) >= 4, "asked again without waiting"
    assert all(w > 0 for w in ctx.control.stopping.waits)
    assert exit_code == loop.ExitCode.NO_JOBS


class LostReplies(NoJobDispatcher):
    def get_job(self, request):
        super().get_job(request)
        raise DispatcherError(FailureKind.LOST, "reply lost")


def test_a_lost_job_reply_is_asked_again_after_a_wait(tmp_path):
    ctx = context(tmp_path, max_no_job=10, no_job_wait=10.0, no_job_wait_max=100.0)
    ctx.control.stopping = RecordingEvent()
    ctx.dispatcher = LostReplies(ctx, answers=3)
    assert loop.Pilot(ctx, clock=lambda: START).run() == loop.ExitCode.SERVER_COMMUNICATION
    assert ctx.dispatcher.asked == 3 and len(ctx.control.stopping.waits) == 3


@pytest.mark.parametrize("kind, code", [(FailureKind.AUTH, loop.ExitCode.CREDENTIALS),
                                        (FailureKind.TRANSPORT, loop.ExitCode.SERVER_COMMUNICATION)])
def test_other_job_request_failures_end_the_pilot(tmp_path, kind, code):
    class Failing(NoJobDispatcher):
        def get_job(self, request):
            super().get_job(request)
            raise DispatcherError(kind, "no")

    ctx = context(tmp_path, max_no_job=10)
    ctx.dispatcher = Failing(ctx, answers=99)
    assert loop.Pilot(ctx, clock=lambda: START).run() == code
    assert ctx.dispatcher.asked == 1


def test_lost_replies_reaching_the_no_job_limit_say_so(tmp_path):
    ctx = context(tmp_path, max_no_job=2)
    assert "reply lost" in stop_reason(ctx, state(no_job_in_row=2, lost_in_row=2), START)
    assert "lost" not in stop_reason(ctx, state(no_job_in_row=2), START)
