"""Reporter and Heartbeat against a fake dispatcher; Control, the flags they set."""

from __future__ import annotations

import signal

import pytest

from pilot.control import Control
from pilot.dispatcher.base import Command, Dispatcher, DispatcherError, FailureKind, JobStatus
from pilot.errors import ErrorCode, PilotError
from pilot.heartbeat import Heartbeat, Reporter
from pilot.journal import Journal

IDENTITY = {"node": "node01", "site_name": "Q", "scheduler_id": None, "pilot_id": "p-1"}


class FakeDispatcher(Dispatcher):
    """Answers each update with the next scripted item: a Command, or an exception to raise."""

    name = "fake"

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.updates = []
        self.on_update = None  # called after each update (the heartbeat test stops the thread with it)

    def get_job(self, request):
        return None

    def update_job(self, update):
        self.updates.append(update)
        if self.on_update is not None:
            self.on_update()
        item = self.script.pop(0) if self.script else Command.NONE
        if isinstance(item, Exception):
            raise item
        return item

    def job_status(self, job_id):
        return JobStatus(job_id, "unknown")


@pytest.fixture
def journal(tmp_path):
    return Journal.create(tmp_path, 4242, 3, "Q", "node01", {"PandaID": "4242"})


def reporter(journal, *script) -> Reporter:
    return Reporter(FakeDispatcher(*script), Control(), journal, dict(IDENTITY))


def test_send_builds_the_update_and_records_the_state(journal, tmp_path):
    rep = reporter(journal)
    assert rep.send("running", core_count=8) is Command.NONE
    update = rep.dispatcher.updates[0]
    assert (update.job_id, update.job_status, update.attempt_nr) == (4242, "running", 3)
    assert (update.node, update.site_name, update.pilot_id, update.core_count) == ("node01", "Q", "p-1", 8)
    assert rep.sent == 1
    assert journal.state == "running"
    assert Journal.load(journal.path).state == "running"  # on disk too
    assert rep.control.job_kill is None and not rep.control.softkill


def test_tobekilled_kills_the_job(journal):
    rep = reporter(journal, Command.KILL)
    rep.send("running")
    control = rep.control
    assert control.job_kill is not None
    assert control.job_kill.code == ErrorCode.KILLED_BY_SERVER == 1144
    assert control.wake.is_set() and control.cancel.is_set()
    assert not control.softkill
    assert control.signum is None


def test_softkill_finishes_the_job_and_takes_no_more(journal):
    rep = reporter(journal, Command.SOFTKILL)
    rep.send("running")
    assert rep.control.softkill is True
    assert rep.control.job_kill is None
    assert not rep.control.cancel.is_set()


def test_debug_and_debugoff_change_the_heartbeat_interval(journal):
    rep = reporter(journal, Command.DEBUG, Command.NONE, Command.DEBUGOFF)
    beat = Heartbeat(rep, interval=1800, debug_interval=60)
    assert rep.heartbeat is beat and beat.interval == 1800
    rep.send("running")
    assert beat.interval == 60
    rep.send("running")
    assert beat.interval == 60  # no command: no change
    rep.send("running")
    assert beat.interval == 1800


def test_debug_never_slows_the_heartbeat(journal):
    rep = reporter(journal, Command.DEBUG)
    beat = Heartbeat(rep, interval=30, debug_interval=60)
    rep.send("running")
    assert beat.interval == 30


def test_debug_without_heartbeat_is_harmless(journal):
    rep = reporter(journal, Command.DEBUG)
    assert rep.send("running") is Command.DEBUG


@pytest.mark.parametrize("kind", [FailureKind.TRANSPORT, FailureKind.SERVER, FailureKind.PROTOCOL])
def test_try_send_swallows_failures_other_than_auth(journal, kind):
    rep = reporter(journal, DispatcherError(kind, "no answer"))
    journal.reported("starting")
    assert rep.try_send("running") is None
    assert journal.state == "starting"  # not delivered: not recorded as reported
    assert rep.try_send("running") is Command.NONE  # the next one goes through
    assert journal.state == "running"


def test_try_send_reraises_auth(journal):
    rep = reporter(journal, DispatcherError(FailureKind.AUTH, "role refused", status=403))
    with pytest.raises(DispatcherError) as info:
        rep.try_send("running")
    assert info.value.kind is FailureKind.AUTH
    assert journal.state == ""


def test_send_raises_every_failure(journal):
    rep = reporter(journal, DispatcherError(FailureKind.TRANSPORT, "timeout"))
    with pytest.raises(DispatcherError):
        rep.send("finished")


def test_try_send_returns_the_command(journal):
    rep = reporter(journal, Command.KILL)
    assert rep.try_send("running") is Command.KILL
    assert rep.control.job_kill.code == ErrorCode.KILLED_BY_SERVER


# --- the heartbeat loop, run in this thread for one beat --------------------------------------------
def one_beat(rep: Reporter) -> Heartbeat:
    beat = Heartbeat(rep, interval=0, debug_interval=0)
    rep.dispatcher.on_update = beat._halt.set  # stop after the first update
    beat.run()
    return beat


def test_heartbeat_says_starting_before_any_report(journal):
    rep = reporter(journal)
    one_beat(rep)
    assert [u.job_status for u in rep.dispatcher.updates] == ["starting"]


def test_heartbeat_repeats_the_last_sent_state(journal):
    rep = reporter(journal)
    rep.send("running")
    one_beat(rep)
    assert [u.job_status for u in rep.dispatcher.updates] == ["running", "running"]


def test_enter_changes_the_heartbeat_state_without_an_update(journal):
    rep = reporter(journal)
    rep.send("running")
    rep.enter("transferring")
    assert len(rep.dispatcher.updates) == 1
    assert journal.state == "running"  # not reported yet
    one_beat(rep)
    assert [u.job_status for u in rep.dispatcher.updates] == ["running", "transferring"]
    assert journal.state == "transferring"


@pytest.mark.parametrize("kind", [FailureKind.AUTH, FailureKind.TRANSPORT])
def test_heartbeat_survives_failures(journal, kind):
    rep = reporter(journal, DispatcherError(kind, "refused"))
    one_beat(rep)  # returns instead of raising
    assert len(rep.dispatcher.updates) == 1


def test_heartbeat_stop_without_start(journal):
    beat = Heartbeat(reporter(journal), interval=1800, debug_interval=60)
    beat.stop()
    assert beat._halt.is_set() and not beat.is_alive()


# --- Control ----------------------------------------------------------------------------------------
def test_first_kill_reason_wins():
    control = Control()
    control.kill_job(PilotError(ErrorCode.KILLED_BY_SERVER))
    control.kill_job(PilotError(ErrorCode.LOOPING))
    assert control.job_kill.code == ErrorCode.KILLED_BY_SERVER


def test_new_job_clears_the_kill():
    control = Control()
    control.kill_job(PilotError(ErrorCode.KILLED_BY_SERVER))
    control.new_job()
    assert control.job_kill is None and not control.cancel.is_set()


@pytest.mark.parametrize("signum, code", [
    (signal.SIGTERM, ErrorCode.SIGTERM), (signal.SIGINT, ErrorCode.SIGINT), (signal.SIGUSR1, ErrorCode.SIGUSR1),
    (signal.SIGXCPU, ErrorCode.SIGXCPU), (signal.SIGHUP, ErrorCode.KILL_SIGNAL),
])
def test_signal_kills_the_job_and_is_remembered(signum, code):
    control = Control()
    control.on_signal(signum)
    control.on_signal(signal.SIGINT)
    assert control.signum == signum  # the first signal is the pilot's exit reason
    assert control.job_kill.code == code
    assert control.wake.is_set() and control.cancel.is_set()
    control.new_job()
    assert control.cancel.is_set()  # after a signal, transfers stay cancelled


def test_a_new_state_never_waits_for_an_update_in_flight(journal):
    import threading

    rep = reporter(journal)
    in_flight, release = threading.Event(), threading.Event()

    def slow_network() -> None:
        in_flight.set()
        release.wait(10)

    rep.dispatcher.on_update = slow_network
    beat = threading.Thread(target=rep.try_send)
    beat.start()
    assert in_flight.wait(10)
    rep.enter("transferring")  # would block until release if it shared the sending lock
    entered = rep.current
    release.set()
    beat.join(10)
    assert entered == "transferring"
    assert rep.dispatcher.updates[0].job_status == "starting"
