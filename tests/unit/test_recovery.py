"""JobRecovery in-process: which leftovers it takes, and what it makes of them.

A leftover is made by running a job whose pilot 'dies' at a chosen step (the step raises SystemExit,
which the job run does not handle, like a pilot that is gone) and then giving the journal an owner of
another boot of the node (a dead pilot for certain)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.base import JobUpdate
from pilot.dispatcher.local import LocalDispatcher
from pilot.errors import ErrorCode
from pilot.job import parse_job
from pilot.jobrun import STEPS, JobRun, PilotContext
from pilot.journal import Journal, boot_id
from pilot.layout import JOURNAL, RECOVERY_LOCK, job_dir_name
from pilot.node import NodeInfo
from pilot.report import FinalReport
from recovery.jobrecovery import JobRecovery
from sitemovers.base import partial_name
from sitemovers.registry import Registry


def context(tmp_path: Path, site: str = "Q") -> PilotContext:
    (tmp_path / "se").mkdir(exist_ok=True)
    return PilotContext(
        config=PilotConfig(queue=site, dispatcher=str(tmp_path / "jobs"), workdir=tmp_path / "work"),
        queue=QueueConfig(name=site, se=str(tmp_path / "se"), kill_grace=2),
        node=NodeInfo(host="node01", cores=2, memory_mb=4000, disk_free_mb=10_000, cpu_mhz=0),
        dispatcher=LocalDispatcher(tmp_path / "jobs"), registry=Registry(), control=Control(),
    )


def definition(panda_id: int, script: str = "echo $PandaID > out.dat") -> dict[str, str]:
    return {"PandaID": str(panda_id), "attemptNr": "1", "transformation": "/bin/sh", "jobPars": f"-c '{script}'",
            "outFiles": "out.dat", "logFile": f"{panda_id}.log.tgz", "prodDBlock": "x"}


def dead(journal_path: Path) -> None:
    data = json.loads(journal_path.read_text())
    data["owner"]["boot_id"] = "another-boot"
    journal_path.write_text(json.dumps(data))


def leftover(tmp_path: Path, panda_id: int, dies_in: str, monkeypatch, script: str = "echo $PandaID > out.dat",
             site: str = "Q") -> Path:
    """A job whose pilot died when step `dies_in` began."""
    def pilot_dies(self):
        raise SystemExit("pilot killed")

    steps = tuple(dataclasses.replace(s, action=pilot_dies) if s.name == dies_in else s for s in STEPS)
    workdir = tmp_path / "work" / job_dir_name(panda_id, 1)
    with monkeypatch.context() as patch:
        patch.setattr("pilot.jobrun.STEPS", steps)
        with pytest.raises(SystemExit):
            JobRun(parse_job(definition(panda_id, script)), context(tmp_path, site), workdir).run()
    dead(workdir / JOURNAL)
    return workdir


def owed_leftover(tmp_path: Path, panda_id: int, attempts: int = 0) -> Path:
    """A cheap leftover: a failed job whose final report is owed."""
    workdir = tmp_path / "work" / job_dir_name(panda_id, 1)
    workdir.mkdir(parents=True)
    journal = Journal.create(workdir, panda_id, 1, "Q", "node01", definition(panda_id))
    journal.recovery_attempts = attempts
    journal.fail(ErrorCode.PAYLOAD_FAILED, "payload exited with code 1")
    journal.owe_final({"state": "failed", "pilot_error_code": 1305, "pilot_error_diag": "payload exited with code 1"})
    journal.reach("staged_out")
    dead(workdir / JOURNAL)
    return workdir


def finals(ctx: PilotContext, panda_id: int) -> list[dict]:
    return [h for h in ctx.dispatcher.history(panda_id) if h["job_status"] in ("finished", "failed")]


def recover(tmp_path: Path, **kwargs) -> tuple[PilotContext, object]:
    ctx = context(tmp_path)
    return ctx, JobRecovery(ctx, [tmp_path / "work"], **kwargs).run()


def test_a_job_left_after_its_payload_is_finished_once_with_its_outputs(tmp_path, monkeypatch):
    workdir = leftover(tmp_path, 11, "stageout", monkeypatch)
    ctx, summary = recover(tmp_path)
    assert summary.recovered == [11]
    final = finals(ctx, 11)
    assert [f["job_status"] for f in final] == ["finished"]
    assert set(final[0]["job_output_report"]) == {"out.dat", "11.log.tgz"}
    assert (tmp_path / "se" / "out.dat").read_text() == "11\n"
    assert not workdir.exists()


def test_a_job_whose_payload_never_ended_is_failed_1153_with_its_log(tmp_path, monkeypatch):
    leftover(tmp_path, 12, "payload", monkeypatch)
    ctx, summary = recover(tmp_path)
    final = finals(ctx, 12)
    assert [(f["job_status"], f["pilot_error_code"]) for f in final] == [("failed", 1153)]
    assert list(final[0]["job_output_report"]) == ["12.log.tgz"]


def test_a_live_owner_another_site_and_a_finished_job_are_left_alone(tmp_path, monkeypatch):
    alive = leftover(tmp_path, 13, "stageout", monkeypatch)
    data = json.loads((alive / JOURNAL).read_text())
    data["owner"].update(pid=os.getpid(), start_time=psutil.Process().create_time(), boot_id=boot_id())
    (alive / JOURNAL).write_text(json.dumps(data))
    other = leftover(tmp_path, 14, "stageout", monkeypatch, site="ELSEWHERE")
    ctx, summary = recover(tmp_path)
    assert summary.taken == 0
    assert finals(ctx, 13) == [] and finals(ctx, 14) == []
    assert (alive / JOURNAL).exists() and (other / JOURNAL).exists()


def test_the_dispatcher_already_has_it_finished_nothing_is_sent_again(tmp_path, monkeypatch):
    workdir = leftover(tmp_path, 15, "report", monkeypatch)
    ctx = context(tmp_path)
    ctx.dispatcher.update_job(FinalReport(15, 1, "finished").update({}))
    summary = JobRecovery(ctx, [tmp_path / "work"]).run()
    assert summary.cleaned == [15] and len(finals(ctx, 15)) == 1
    assert not workdir.exists()


def test_an_attempt_that_moved_on_is_only_cleaned_up(tmp_path, monkeypatch):
    workdir = leftover(tmp_path, 16, "stageout", monkeypatch)
    ctx = context(tmp_path)
    ctx.dispatcher.update_job(JobUpdate(job_id=16, job_status="running", attempt_nr=2))
    summary = JobRecovery(ctx, [tmp_path / "work"]).run()
    assert summary.cleaned == [16] and finals(ctx, 16) == []
    assert not workdir.exists()
    assert not (tmp_path / "se" / "out.dat").exists(), "the new attempt's storage is not touched"


def test_a_partial_file_is_removed_and_an_intact_output_not_sent_again(tmp_path, monkeypatch):
    workdir = leftover(tmp_path, 17, "stageout", monkeypatch)
    partial = tmp_path / "se" / partial_name("17.log.tgz")  # the one temporary-name pattern of a put
    partial.write_bytes(b"half a log")
    (tmp_path / "se" / "out.dat").write_text("17\n")  # the put landed; its journal record did not
    before = (tmp_path / "se" / "out.dat").stat().st_mtime_ns
    os.utime(tmp_path / "se" / "out.dat", ns=(1, 1))
    ctx, summary = recover(tmp_path)
    assert summary.recovered == [17]
    assert not partial.exists()
    assert (tmp_path / "se" / "out.dat").stat().st_mtime_ns == 1 != before, "not copied again"
    assert set(finals(ctx, 17)[0]["job_output_report"]) == {"out.dat", "17.log.tgz"}
    assert not workdir.exists()


def test_at_most_20_jobs_per_pilot(tmp_path):
    for n in range(21):
        owed_leftover(tmp_path, 100 + n)
    ctx, summary = recover(tmp_path)
    assert len(summary.recovered) == 20
    assert sum(1 for n in range(21) if finals(ctx, 100 + n)) == 20
    ctx, summary = recover(tmp_path)
    assert len(summary.recovered) == 1, "the next pilot takes the rest"


def test_the_15th_attempt_fails_the_job_1158_and_sets_the_journal_aside(tmp_path):
    workdir = owed_leftover(tmp_path, 30, attempts=15)
    ctx, summary = recover(tmp_path)
    assert summary.exhausted == [30]
    assert [f["pilot_error_code"] for f in finals(ctx, 30)] == [ErrorCode.RECOVERY_ATTEMPTS_EXHAUSTED]
    assert (workdir / "journal.json.exhausted").exists() and not (workdir / JOURNAL).exists()
    assert recover(tmp_path)[1].taken == 0, "never again"


def test_the_attempt_is_counted_before_any_work(tmp_path, monkeypatch):
    workdir = owed_leftover(tmp_path, 31, attempts=3)
    seen = []

    def no_report(*args, **kwargs):
        seen.append(Journal.load(workdir / JOURNAL).recovery_attempts)
        return False

    monkeypatch.setattr("pilot.jobrun.send_final", no_report)
    recover(tmp_path)
    assert seen == [4]
    assert not (workdir / RECOVERY_LOCK).exists(), "released for a later pilot"


def test_a_stale_lock_is_broken_a_live_one_is_respected(tmp_path):
    stale = owed_leftover(tmp_path, 40)
    (stale / RECOVERY_LOCK).write_text(json.dumps({"pid": 1, "start_time": 1.0, "boot_id": "another-boot",
                                                   "node": "node01"}))
    held = owed_leftover(tmp_path, 41)
    me = JobRecovery(context(tmp_path), []).me
    (held / RECOVERY_LOCK).write_text(json.dumps(me))  # this very process holds it: alive
    ctx, summary = recover(tmp_path)
    assert summary.recovered == [40] and not stale.exists()
    assert finals(ctx, 41) == [] and (held / JOURNAL).exists()


def test_a_corrupt_journal_is_set_aside_and_the_job_reported(tmp_path):
    workdir = tmp_path / "work" / job_dir_name(50, 2)
    workdir.mkdir(parents=True)
    (workdir / JOURNAL).write_text('{"panda_id": 50, "attempt_nr": 2, "job": {"PandaID": "5')
    os.utime(workdir / JOURNAL, (time.time() - 7200, time.time() - 7200))
    (tmp_path / "work" / job_dir_name(51, 1)).mkdir()
    os.symlink("/etc/passwd", tmp_path / "work" / job_dir_name(51, 1) / JOURNAL)
    os.utime(tmp_path / "work" / job_dir_name(51, 1) / JOURNAL, (1, 1), follow_symlinks=False)
    ctx, summary = recover(tmp_path)
    assert sorted(summary.corrupt) == sorted(str(tmp_path / "work" / job_dir_name(n, a)) for n, a in ((50, 2), (51, 1)))
    assert [(f["pilot_error_code"], f["attempt_nr"]) for f in finals(ctx, 50)] == [(1156, 2)]
    assert (workdir / "journal.json.corrupt").exists()
    assert recover(tmp_path)[1].corrupt == [], "set aside once"


def test_two_recovering_pilots_at_once_recover_each_job_once(tmp_path):
    for n in range(12):
        owed_leftover(tmp_path, 200 + n)
    ctxs = [context(tmp_path), context(tmp_path)]
    recoveries = [JobRecovery(ctx, [tmp_path / "work"]) for ctx in ctxs]
    # two owners, both alive: this process, and (as the second) process 1
    recoveries[1].me = dict(recoveries[1].me, pid=1, start_time=psutil.Process(1).create_time())
    start = threading.Barrier(2)
    summaries = []

    def go(r):
        start.wait()
        summaries.append(r.run())

    threads = [threading.Thread(target=go, args=(r,)) for r in recoveries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = sorted(n for s in summaries for n in s.recovered + s.cleaned)
    assert taken == list(range(200, 212))
    assert all(len(finals(ctxs[0], 200 + n)) == 1 for n in range(12))


def test_the_owed_failure_of_a_job_that_never_ran_is_delivered_as_it_was(tmp_path):
    from pilot.dispatcher.base import DispatcherError, FailureKind
    from pilot.errors import PilotError
    from pilot.jobrun import report_unrun

    class Unreachable(LocalDispatcher):
        def update_job(self, update):
            raise DispatcherError(FailureKind.TRANSPORT, "connection refused")

    ctx = context(tmp_path)
    ctx.dispatcher = Unreachable(tmp_path / "jobs")
    workdir = tmp_path / "work" / job_dir_name(70, 1)
    error = PilotError(ErrorCode.BAD_FILE_NAME, "file name 'a/b' contains a path separator")
    report_unrun(ctx, 70, 1, {"PandaID": "70", "outFiles": "a/b"}, error, workdir)
    dead(workdir / JOURNAL)
    ctx, summary = recover(tmp_path)
    assert summary.recovered == [70] and not workdir.exists()
    assert [(f["job_status"], f["pilot_error_code"]) for f in finals(ctx, 70)] == [("failed", 1371)]


def test_a_job_the_embedded_dispatcher_offered_again_is_only_cleaned_up(tmp_path, monkeypatch):
    workdir = leftover(tmp_path, 60, "stageout", monkeypatch)
    ctx = context(tmp_path)
    claimed = tmp_path / "jobs" / "claimed" / "60.json"
    claimed.write_text(json.dumps(definition(60)))
    dispatcher = LocalDispatcher(tmp_path / "jobs", lost_heartbeat=60)
    assert dispatcher.retry_lost(now=time.time() + 3600) == [60]
    summary = JobRecovery(ctx, [tmp_path / "work"]).run()
    assert summary.cleaned == [60] and not workdir.exists()
    assert json.loads((tmp_path / "jobs" / "60.json").read_text())["attemptNr"] == "2", "offered again"
    assert [h["job_status"] for h in ctx.dispatcher.history(60)] == ["starting", "running", "failed"]


def test_an_owner_on_another_node_is_dead_when_its_journal_is_older_than_two_heartbeats(tmp_path):
    fresh, old = owed_leftover(tmp_path, 80), owed_leftover(tmp_path, 81)
    for workdir in (fresh, old):
        data = json.loads((workdir / JOURNAL).read_text())
        data["owner"] = {"pid": os.getpid(), "start_time": psutil.Process().create_time(), "boot_id": "b",
                         "node": "another-node"}
        (workdir / JOURNAL).write_text(json.dumps(data))
    data = json.loads((old / JOURNAL).read_text())
    data["updated"] = time.time() - 2 * 1800 - 60
    (old / JOURNAL).write_text(json.dumps(data))
    ctx, summary = recover(tmp_path)
    assert summary.recovered == [81] and finals(ctx, 80) == []
