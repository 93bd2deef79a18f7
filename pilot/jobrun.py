"""The life of one job, start to end.

    journal: created
    report starting -> stage in                              -> journal: staged_in
    report running  -> payload under watch (monitor, heartbeat, kill requests)
                                                             -> journal: payload_done
    (transferring)  -> stage out outputs (only if the payload succeeded)
    log tarball -> stage out the log                         -> journal: staged_out
    final report (finished / failed), kept in the journal until delivered
                                                             -> journal: reported -> clean up

Any step may fail with a PilotError: the job is then reported failed with that code, after the log has
been shipped. Every transferred file and every reported state is in the journal, so a later pilot can
finish the job from the step it reached.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.base import Dispatcher, DispatcherError, FailureKind, JobUpdate
from pilot.errors import ErrorCode, PilotError, one_line
from pilot.heartbeat import Heartbeat, Reporter
from pilot.inputpolicy import check_inputs
from pilot.job import Job
from pilot.journal import Journal
from pilot.layout import PILOT_LOG, STDERR, STDOUT
from pilot.monitor import Limits, Monitor, watch
from pilot.node import NodeInfo
from pilot.payload import Payload, build_command, cores_for, payload_env
from pilot.release import (
    Release,
    find_release,
    log_setup_output,
    needs_wrapper,
    release_env,
    setup_failure,
    wrap,
    write_wrapper,
)
from pilot.report import (
    job_log,
    job_metrics,
    last_line,
    make_log_tarball,
    pilot_timing,
    read_job_report,
    tail,
    utc,
)
from pilot.staging import Stager, Transferred, output_report
from pilot.transform import Downloader, is_url
from sitemovers.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class PilotContext:
    """What all jobs of one pilot share."""

    config: PilotConfig
    queue: QueueConfig
    node: NodeInfo
    dispatcher: Dispatcher
    registry: Registry
    control: Control
    deadline: Optional[float] = None  # wall-clock time at which the pilot must be gone

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "node": self.node.host,
            "site_name": self.queue.name,
            "scheduler_id": self.config.scheduler_id or None,
            "pilot_id": self.config.pilot_id or None,
        }


@dataclass
class JobResult:
    panda_id: int
    state: str  # finished or failed
    error_code: int = 0
    diag: str = ""
    exit_code: Optional[int] = None
    timing: dict[str, float] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    workdir: Optional[Path] = None
    reported: bool = False
    log_location: str = ""


class JobRun:
    def __init__(self, job: Job, ctx: PilotContext, workdir: Path, getjob_seconds: float = 0.0) -> None:
        self.job = job
        self.ctx = ctx
        self.workdir = workdir
        self.timing: dict[str, float] = {"getjob": getjob_seconds}
        self.started = time.time()
        self.payload: Optional[Payload] = None
        self.monitor: Optional[Monitor] = None
        self.outputs: list[Transferred] = []
        self.error: Optional[PilotError] = None
        self.exit_code: Optional[int] = None
        self.stager = Stager(ctx.queue, ctx.registry, ctx.control.cancel)
        self.cores = cores_for(job, ctx.queue)
        self.release: Optional[Release] = None
        self.transformation: Optional[Path] = None  # an analysis job's downloaded script

    # --- the sequence ---------------------------------------------------------------------------------
    def run(self) -> JobResult:
        try:
            self.workdir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            code = ErrorCode.NO_LOCAL_SPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ErrorCode.MKDIR
            error = PilotError(code, f"cannot create the work dir {self.workdir}: {exc.strerror}")
            return report_unrun(self.ctx, self.job.panda_id, self.job.attempt_nr, self.job.raw, error, None)
        with job_log(self.workdir):
            log.info("job %d (attempt %d) in %s", self.job.panda_id, self.job.attempt_nr, self.workdir)
            self.journal = Journal.create(self.workdir, self.job.panda_id, self.job.attempt_nr,
                                          self.ctx.queue.name, self.ctx.node.host, self.job.raw)
            self.reporter = Reporter(self.ctx.dispatcher, self.ctx.control, self.journal, self.ctx.identity)
            heartbeat = Heartbeat(self.reporter, self.ctx.config.heartbeat or self.ctx.queue.heartbeat,
                                  self.ctx.queue.debug_heartbeat)
            try:
                self.reporter.try_send("starting")
                heartbeat.start()
                self._step("setup", self._prepare)
                self._step("stagein", self._stage_in)
                self.reporter.try_send("running")
                self._step("payload", self._run_payload)
                self.reporter.enter("transferring")
                self._step("stageout", self._stage_out_outputs)
            except DispatcherError as exc:
                if exc.kind is FailureKind.AUTH:
                    heartbeat.stop()
                    self._kill_payload()
                    raise  # credentials refused: the pilot stops, the journal keeps the job for recovery
                self._fail(exc)
            except PilotError as exc:
                self._fail(exc)
            except Exception as exc:  # a pilot bug must still end in a report, not a lost job
                log.exception("unexpected error in job %d", self.job.panda_id)
                self._fail(PilotError(ErrorCode.UNKNOWN_EXCEPTION, f"{type(exc).__name__}: {exc}"))
            finally:
                self._kill_payload()
            log_entry = self._ship_log()
            heartbeat.stop()
            self.journal.reach("staged_out")
            result = self._final_report(log_entry)
        if result.reported and not self.ctx.config.keep_workdirs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return result

    def _step(self, name: str, action: Any) -> None:
        """Run one step; a kill request (signal, server, monitor) overrides whatever the step saw."""
        begin = time.monotonic()
        try:
            action()
        except DispatcherError:
            raise
        except PilotError:
            if self.ctx.control.job_kill is not None:
                raise self.ctx.control.job_kill from None
            raise
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.monotonic() - begin
        if self.ctx.control.job_kill is not None:
            raise self.ctx.control.job_kill

    def _fail(self, error: PilotError) -> None:
        if self.error is None:
            self.error = error
            log.error("job %d failed: %d %s", self.job.panda_id, error.code, error.diag)

    # --- steps ------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Before anything is staged: the release is installed, the inputs fit the site's policy and
        the disk, an analysis job's transformation comes from a trusted place."""
        queue = self.ctx.queue
        self.release = find_release(self.job, queue)
        if self.release is not None:
            log.info("release %s (%s) found in %s", self.release.name, self.release.platform, self.release.path)
        check_inputs(self.job, queue, self.workdir, lambda lfn: self.journal.file_info("in", lfn) is not None)
        if is_url(self.job.transformation):
            self.transformation = Downloader.for_queue(queue).fetch(self.job.transformation, self.workdir)

    def _stage_in(self) -> None:
        self.stager.stage_in(self.job, self.workdir, self.journal)
        self.journal.reach("staged_in")

    def _run_payload(self) -> None:
        control = self.ctx.control
        begin = time.monotonic()
        queue = self.ctx.queue
        argv = build_command(self.job, self.workdir, self.transformation)
        wrapped = needs_wrapper(self.release, queue)
        if wrapped:
            argv = wrap(argv, write_wrapper(self.workdir, self.job.panda_id, queue))
        env = payload_env(self.job, self.workdir, dict(os.environ), self.cores, release_env(self.job, self.release))
        self.payload = Payload(argv, self.workdir, env)
        limits = Limits.for_job(self.job, queue, self.ctx.deadline, self.cores)
        self.monitor = Monitor(self.payload, self.workdir, limits, queue)
        self.timing["setup"] = self.timing.get("setup", 0.0) + time.monotonic() - begin
        if control.job_kill is not None:
            raise control.job_kill
        self.payload.start(control.wake)
        reason = watch(self.payload, self.monitor, control)
        self.payload.reap()
        code = self.payload.returncode
        self.exit_code = 128 - code if code is not None and code < 0 else code
        self.journal.reach("payload_done")
        log.info("payload ended with exit code %s after %.1f s", self.exit_code,
                 self.payload.ended - self.payload.started)
        if wrapped:
            log_setup_output(self.workdir)
        if reason is not None:
            raise reason
        failed_setup = setup_failure(self.workdir, self.exit_code) if wrapped and self.exit_code else None
        if failed_setup is not None:
            raise failed_setup
        if self.exit_code != 0:
            detail = last_line(self.workdir / STDERR)
            raise PilotError(ErrorCode.PAYLOAD_FAILED,
                             f"payload exited with code {self.exit_code}" + (f": {detail}" if detail else ""))

    def _stage_out_outputs(self) -> None:
        files = [(spec, self.workdir / spec.lfn) for spec in self.job.outputs]
        self.outputs = self.stager.stage_out(self.job, files, self.journal)

    def _kill_payload(self) -> None:
        """Whatever happened, nothing of the payload outlives its job."""
        if self.payload is None or self.payload.proc is None:
            return
        if not self.payload.exited.is_set():
            self.payload.kill(self.ctx.queue.kill_grace)
        elif self.payload.returncode is None:
            self.payload.reap()

    def _ship_log(self) -> Optional[Transferred]:
        """The log tarball goes out whatever happened, even after a kill (with a fresh cancel flag)."""
        begin = time.monotonic()
        stager = Stager(self.ctx.queue, self.ctx.registry, threading.Event())
        try:
            tarball = make_log_tarball(self.workdir, self.job.log.lfn)
            shipped = stager.stage_out(self.job, [(self.job.log, tarball)], self.journal)
            return shipped[0]
        except PilotError as exc:
            log.error("log of job %d not shipped: %s", self.job.panda_id, exc.diag)
            self._fail(exc if exc.code == ErrorCode.LOGFILE_CREATION else PilotError(exc.code, f"log: {exc.diag}"))
            return None
        except Exception as exc:  # the report must follow, whatever broke here
            log.exception("log of job %d not shipped", self.job.panda_id)
            self._fail(PilotError(ErrorCode.LOGFILE_CREATION, f"log: {type(exc).__name__}: {exc}"))
            return None
        finally:
            self.timing["stageout"] = self.timing.get("stageout", 0.0) + time.monotonic() - begin

    # --- the final report -------------------------------------------------------------------------
    def _final_fields(self, log_entry: Optional[Transferred]) -> dict[str, Any]:
        failed = self.error is not None
        files = [*self.outputs, *([log_entry] if log_entry else [])]
        payload, monitor = self.payload, self.monitor
        job_report = read_job_report(self.workdir)
        fields: dict[str, Any] = {
            "trans_exit_code": self.exit_code if self.exit_code is not None else (0 if not failed else None),
            "pilot_error_code": int(self.error.code) if failed else 0,
            "pilot_error_diag": self.error.diag if failed else None,
            "core_count": self.cores,
            "n_input_files": len(self.job.inputs),
            "start_time": utc(self.started),
            "end_time": utc(time.time()),
            "job_output_report": output_report(self.job, files) if files else None,
            "pilot_timing": pilot_timing(self.timing),
            "pilot_log": tail(self.workdir / PILOT_LOG, 1024),
            "stdout": tail(self.workdir / STDOUT, 2048) or None,
        }
        if payload is not None and payload.proc is not None:
            fields.update(cpu_consumption_time=int(round(payload.cpu_seconds)), cpu_consumption_unit="s",
                          cpu_conversion_factor=1.0)
            fields["max_rss"] = max(payload.max_rss_kb, monitor.max_rss_kb if monitor else 0) or None
        if monitor is not None:
            fields.update(max_pss=monitor.max_pss_kb or None, max_vmem=monitor.max_vmem_kb or None)
        if job_report is not None:
            fields["meta_data"] = json.dumps(job_report)
            exit_code, events = job_report.get("exitCode"), job_report.get("nEvents")
            if _is_int32(exit_code) and exit_code != 0:
                fields["exe_error_code"] = exit_code
                fields["exe_error_diag"] = one_line(str(job_report.get("exitMsg", "")))
            if _is_int32(events) and events >= 0:
                fields["n_events"] = events
        fields["job_metrics"] = job_metrics(coreCount=self.cores, nInputFiles=len(self.job.inputs),
                                            bytesIn=self._bytes("in"), bytesOut=self._bytes("out"))
        return {k: v for k, v in fields.items() if v is not None}

    def _essential_fields(self, log_entry: Optional[Transferred], exc: Exception) -> dict[str, Any]:
        """What the report must say even when gathering the rest failed: the job's own error (or this
        one), the exit code, and the files already in storage, so that none of them is orphaned."""
        self._fail(PilotError(ErrorCode.UNKNOWN_EXCEPTION, f"final report: {type(exc).__name__}: {exc}"))
        assert self.error is not None
        fields: dict[str, Any] = {"pilot_error_code": int(self.error.code), "pilot_error_diag": self.error.diag}
        if self.exit_code is not None:
            fields["trans_exit_code"] = self.exit_code
        try:
            fields["job_output_report"] = output_report(self.job, [*self.outputs, *filter(None, [log_entry])])
        except Exception:
            log.exception("no output report for job %d", self.job.panda_id)
        return fields

    def _bytes(self, direction: str) -> int:
        return sum(int(info.get("fsize", 0)) for key, info in self.journal.files.items()
                   if key.startswith(direction + ":"))

    def _final_report(self, log_entry: Optional[Transferred]) -> JobResult:
        try:
            fields = self._final_fields(log_entry)
        except Exception as exc:  # a pilot bug in gathering the figures must not cost the report itself
            log.exception("the final report of job %d cannot be put together", self.job.panda_id)
            fields = self._essential_fields(log_entry, exc)
        state = "failed" if self.error is not None else "finished"
        self.journal.owe_final({"state": state, **fields})
        result = JobResult(
            panda_id=self.job.panda_id, state=state,
            error_code=int(self.error.code) if self.error else 0,
            diag=self.error.diag if self.error else "",
            exit_code=self.exit_code, timing=dict(self.timing),
            bytes_in=self._bytes("in"), bytes_out=self._bytes("out"),
            workdir=self.workdir, log_location=log_entry.location if log_entry else "",
        )
        try:
            self.reporter.send(state, **fields)
        except DispatcherError as exc:
            log.error("final report of job %d not delivered, kept in the journal: %s", self.job.panda_id, exc.diag)
            if exc.kind is FailureKind.AUTH:
                raise
            return result
        except Exception:  # a client bug: the report stays owed, in the journal
            log.exception("final report of job %d not delivered, kept in the journal", self.job.panda_id)
            return result
        self.journal.owe_final(None)
        self.journal.reach("reported")
        result.reported = True
        log.info("job %d %s (error %d) reported", self.job.panda_id, state, result.error_code)
        return result


def _is_int32(value: Any) -> bool:
    """A JSON integer the server can store (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31


def report_unrun(ctx: PilotContext, panda_id: int, attempt_nr: int, raw: dict[str, Any], error: PilotError,
                 workdir: Optional[Path]) -> JobResult:
    """A job that never started (a broken definition, no work dir) is reported failed at once. If the
    dispatcher cannot take that report, it is kept in a journal in `workdir`, for recovery."""
    fields = {"pilot_error_code": int(error.code), "pilot_error_diag": error.diag}
    result = JobResult(panda_id, "failed", int(error.code), error.diag, workdir=workdir, reported=True)
    try:
        ctx.dispatcher.update_job(JobUpdate(job_id=panda_id, job_status="failed", attempt_nr=attempt_nr,
                                            **ctx.identity, **fields))
        return result
    except DispatcherError as exc:
        if exc.kind is FailureKind.AUTH:
            raise
        log.error("failure of job %d not delivered: %s", panda_id, exc.diag)
    result.reported = False
    if workdir is None:
        log.error("job %d: no work dir to keep its report in", panda_id)
        return result
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        journal = Journal.create(workdir, panda_id, attempt_nr, ctx.queue.name, ctx.node.host,
                                 {str(k): str(v) for k, v in raw.items()})
        journal.owe_final({"state": "failed", **fields})
        journal.reach("staged_out")
    except OSError as exc:
        log.error("job %d: report kept nowhere: %s", panda_id, exc)
    return result

