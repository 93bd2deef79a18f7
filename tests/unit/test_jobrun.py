"""One job's life in-process, where failures can be injected: the final report must always be sent."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.base import Dispatcher, DispatcherError, FailureKind, JobStatus
from pilot.dispatcher.local import LocalDispatcher
from pilot.errors import ErrorCode, PilotError
from pilot.job import parse_job
from pilot.jobrun import STEPS, JobRun, PilotContext, report_unrun
from pilot.journal import Journal
from pilot.node import NodeInfo
from sitemovers.registry import Registry


def context(tmp_path: Path, dispatcher: Dispatcher) -> PilotContext:
    (tmp_path / "se").mkdir(exist_ok=True)
    return PilotContext(
        config=PilotConfig(queue="Q", dispatcher=str(tmp_path / "jobs"), workdir=tmp_path / "work"),
        queue=QueueConfig(name="Q", se=str(tmp_path / "se"), kill_grace=2),
        node=NodeInfo(host="node01", cores=2, memory_mb=4000, disk_free_mb=10_000, cpu_mhz=0),
        dispatcher=dispatcher, registry=Registry(), control=Control(),
    )


def job(panda_id: int = 7, script: str = "echo hi > out.dat", outputs: str = "out.dat,7.log.tgz"):
    return parse_job({"PandaID": str(panda_id), "attemptNr": "2", "transformation": "/bin/sh",
                      "jobPars": f"-c '{script}'", "outFiles": outputs, "logFile": "7.log.tgz"})


class Unreachable(Dispatcher):
    def get_job(self, request):
        return None

    def update_job(self, update):
        raise DispatcherError(FailureKind.TRANSPORT, "connection refused")

    def job_status(self, job_id):
        return JobStatus(job_id, "unknown")


def test_a_job_is_reported_even_when_its_journal_cannot_be_written(tmp_path, monkeypatch):
    local = LocalDispatcher(tmp_path / "jobs")

    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pilot.journal.atomic_write_json", disk_full)
    result = JobRun(job(), context(tmp_path, local), tmp_path / "work" / "job7").run()
    assert result.reported and result.state == "finished"
    final = local.history(7)[-1]
    assert final["job_status"] == "finished" and "out.dat" in final["job_output_report"]


def test_a_work_dir_that_cannot_be_made_fails_the_job_1199(tmp_path):
    local = LocalDispatcher(tmp_path / "jobs")
    (tmp_path / "work").write_text("a file where the pilot's work dir should be")
    result = JobRun(job(), context(tmp_path, local), tmp_path / "work" / "job7").run()
    assert (result.state, result.error_code, result.reported) == ("failed", ErrorCode.MKDIR, True)
    assert local.history(7)[-1]["pilot_error_code"] == ErrorCode.MKDIR


def test_an_undeliverable_final_report_is_kept_with_the_work_dir(tmp_path):
    workdir = tmp_path / "work" / "job7"
    result = JobRun(job(), context(tmp_path, Unreachable()), workdir).run()
    assert result.state == "finished" and not result.reported
    journal = json.loads((workdir / "journal.json").read_text())
    assert journal["step"] == "staged_out" and journal["final"]["state"] == "finished"
    assert (tmp_path / "se" / "out.dat").read_text() == "hi\n", "the output is in storage"


def test_an_unrun_job_whose_failure_cannot_be_delivered_gets_a_journal(tmp_path):
    error = PilotError(ErrorCode.BAD_FILE_NAME, "file name 'a/b' contains a path separator")
    workdir = tmp_path / "work" / "job9"
    result = report_unrun(context(tmp_path, Unreachable()), 9, 1, {"PandaID": 9, "outFiles": "a/b"}, error, workdir)
    assert not result.reported
    journal = json.loads((workdir / "journal.json").read_text())
    assert journal["final"] == {"state": "failed", "pilot_error_code": 1371,
                                "pilot_error_diag": "file name 'a/b' contains a path separator"}
    assert Journal.load(workdir / "journal.json").job["PandaID"] == "9"


def test_a_refused_identity_is_not_swallowed(tmp_path):
    class Refusing(Unreachable):
        def update_job(self, update):
            raise DispatcherError(FailureKind.AUTH, "no production/pilot role")

    with pytest.raises(DispatcherError):
        report_unrun(context(tmp_path, Refusing()), 9, 1, {}, PilotError(ErrorCode.NOT_DEFINED), tmp_path / "w")


def test_a_job_taken_after_a_signal_is_never_run(tmp_path):
    local = LocalDispatcher(tmp_path / "jobs")
    ctx = context(tmp_path, local)
    ctx.control.on_signal(15)
    ctx.control.new_job()  # what the loop does when a job arrives after the signal
    result = JobRun(job(script="touch ran.flag"), ctx, tmp_path / "work" / "job7").run()
    assert result.error_code == ErrorCode.SIGTERM
    assert [h["job_status"] for h in local.history(7)] == ["starting", "failed"]
    assert "7.log.tgz" in local.history(7)[-1]["job_output_report"]


def test_a_broken_report_is_still_sent_as_a_pilot_failure(tmp_path, monkeypatch):
    local = LocalDispatcher(tmp_path / "jobs")

    def broken(*args, **kwargs):
        raise KeyError("guid")

    monkeypatch.setattr("pilot.report.output_report", broken)
    result = JobRun(job(), context(tmp_path, local), tmp_path / "work" / "job7").run()
    assert result.reported and result.error_code == ErrorCode.UNKNOWN_EXCEPTION
    final = local.history(7)[-1]
    assert final["job_status"] == "failed" and "KeyError" in final["pilot_error_diag"]


def test_a_broken_report_keeps_the_job_error_and_the_files_in_storage(tmp_path, monkeypatch):
    local = LocalDispatcher(tmp_path / "jobs")

    def broken(*args, **kwargs):
        raise ValueError("job report")

    monkeypatch.setattr("pilot.report.read_job_report", broken)
    result = JobRun(job(script="exit 3"), context(tmp_path, local), tmp_path / "work" / "job7").run()
    assert result.reported and result.error_code == ErrorCode.PAYLOAD_FAILED
    final = local.history(7)[-1]
    assert final["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED and final["trans_exit_code"] == 3
    assert list(final["job_output_report"]) == ["7.log.tgz"]


def test_the_journal_says_who_owned_the_job_what_the_payload_was_and_how_it_ended(tmp_path):
    local = LocalDispatcher(tmp_path / "jobs")
    ctx = context(tmp_path, local)
    ctx.config.keep_workdirs = True
    workdir = tmp_path / "work" / "job7"
    JobRun(job(script="exit 3"), ctx, workdir).run()
    journal = json.loads((workdir / "journal.json").read_text())
    owner = journal["owner"]
    assert owner["pid"] == os.getpid() and owner["boot_id"] and owner["node"] == "node01"
    assert owner["start_time"] == pytest.approx(psutil.Process().create_time())
    identity = journal["payload"]
    assert identity["pid"] == identity["pgid"] == identity["sid"] and identity["start_time"] > owner["start_time"]
    assert journal["outcome"]["payload_done"]["exit_code"] == 3
    assert journal["error"]["code"] == ErrorCode.PAYLOAD_FAILED
    assert journal["step"] == "reported"


def test_running_is_reported_once_the_payload_has_started(tmp_path):
    class Watching(LocalDispatcher):
        seen: list = []

        def update_job(self, update):
            if update.job_status == "running":
                on_disk = json.loads((tmp_path / "work" / "job7" / "journal.json").read_text())
                self.seen.append(on_disk["payload"].get("pid"))
            return super().update_job(update)

    local = Watching(tmp_path / "jobs")
    JobRun(job(), context(tmp_path, local), tmp_path / "work" / "job7").run()
    assert [h["job_status"] for h in local.history(7)] == ["starting", "running", "finished"]
    assert local.seen and local.seen[0], "the payload had started (and was recorded) before 'running'"


def test_resume_re_enters_after_the_payload_without_running_it_again(tmp_path, monkeypatch):
    local = LocalDispatcher(tmp_path / "jobs")
    workdir = tmp_path / "work" / "job7"

    def pilot_dies(self):
        raise SystemExit("killed")  # not an error the job run handles: like a pilot that is gone

    with monkeypatch.context() as patch:
        steps = tuple(s if s.name != "stageout" else dataclasses.replace(s, action=pilot_dies) for s in STEPS)
        patch.setattr("pilot.jobrun.STEPS", steps)
        with pytest.raises(SystemExit):
            JobRun(job(script="echo run >> runs; echo hi > out.dat"), context(tmp_path, local), workdir).run()
    journal = Journal.load(workdir / "journal.json")
    assert journal.step == "payload_done" and journal.outcome["payload_done"]["exit_code"] == 0
    result = JobRun.resume(journal, context(tmp_path, local))
    assert result.reported and result.state == "finished"
    states = [h["job_status"] for h in local.history(7)]
    assert states == ["starting", "running", "finished"], "nothing reported twice, the payload not run again"
    assert set(local.history(7)[-1]["job_output_report"]) == {"out.dat", "7.log.tgz"}
    assert (tmp_path / "se" / "out.dat").read_text() == "hi\n"
    assert not workdir.exists(), "removed once the report was taken"


def test_resume_sends_the_report_a_dead_pilot_owed(tmp_path):
    workdir = tmp_path / "work" / "job7"
    JobRun(job(), context(tmp_path, Unreachable()), workdir).run()
    local = LocalDispatcher(tmp_path / "jobs")
    owed = Journal.load(workdir / "journal.json")
    assert owed.final is not None
    end_time = owed.final["end_time"]
    result = JobRun.resume(owed, context(tmp_path, local))
    assert result.reported and [h["job_status"] for h in local.history(7)] == ["finished"]
    assert local.history(7)[-1]["end_time"] == end_time, "the owed report, not a new one"


def test_resume_with_an_error_reports_the_job_failed_and_still_ships_the_log(tmp_path, monkeypatch):
    local = LocalDispatcher(tmp_path / "jobs")
    workdir = tmp_path / "work" / "job7"
    steps = tuple(s if s.name != "payload" else dataclasses.replace(s, action=lambda self: sys.exit(9))
                  for s in STEPS)
    with monkeypatch.context() as patch:
        patch.setattr("pilot.jobrun.STEPS", steps)
        with pytest.raises(SystemExit):
            JobRun(job(), context(tmp_path, local), workdir).run()
    journal = Journal.load(workdir / "journal.json")
    lost = PilotError(ErrorCode.LOST_JOB_NOT_FINISHED, "the payload never ended")
    result = JobRun.resume(journal, context(tmp_path, local), error=lost)
    assert (result.state, result.error_code, result.reported) == ("failed", 1153, True)
    final = local.history(7)[-1]
    assert final["pilot_error_code"] == 1153 and list(final["job_output_report"]) == ["7.log.tgz"]
