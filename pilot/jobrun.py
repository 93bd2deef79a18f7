"""The life of one job, start to end: a table of steps (STEPS), walked in order.

    step       what runs                                   journal mark     state shown
    setup      release check, input policy, analysis trf   (stage-in's)     starting (sent before)
    stagein    the inputs come in                          staged_in        starting
    payload    the payload runs under watch                payload_done     running (sent once started)
    stageout   the outputs go out                          outputs_done     transferring (next heartbeat)
    log        the log tarball goes out                    staged_out       transferring
    report     the final report (finished / failed)        reported         -

`run()` starts a new job in a new work dir; `resume(journal)` re-enters a job a dead pilot left, through
the same steps: whatever the journal shows as reached is skipped, and so is every step after the job
failed, except the log and the report, which always run. How each step ended is in the journal: its
mark, the payload's exit code, the job's error (the first one counts). Every transferred file and every
reported state is in the journal too, so a later pilot can finish the job from the step it reached.
The final report is put together and delivered by pilot/report.py; what all jobs of one pilot share
(PilotContext) and what a job gives back (JobResult) are in pilot/context.py.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pilot.context import JobResult, PilotContext
from pilot.control import signal_error
from pilot.diskspace import give_back_reserve, local_space_error
from pilot.dispatcher.base import DispatcherError, FailureKind
from pilot.errors import ErrorCode, PilotError
from pilot.heartbeat import Heartbeat, Reporter
from pilot.identity import make_launcher
from pilot.inputpolicy import check_inputs
from pilot.job import Job, parse_job
from pilot.journal import Journal
from pilot.launcher import Launcher
from pilot.layout import JobDir
from pilot.monitor import Limits, Monitor, watch
from pilot.payload import Payload, build_command, cores_for, payload_env, process_identity
from pilot.pcache import CacheHook
from pilot.proctrack import CgroupTracker, new_tracker
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
    FinalReport,
    JobFacts,
    final_report,
    job_log,
    journal_note,
    last_line,
    make_log_tarball,
    moved_bytes,
    send_final,
    tail,
    utc,
)
from pilot.staging import Stager
from pilot.transform import Downloader, is_url

log = logging.getLogger(__name__)

# A batch system ending a job (scancel, condor_rm) signals all of its processes at once: a payload that died
# of a signal the pilot did not send (exit code above 128) is given this long for the pilot's own signal, so that the
# job is reported with the signal's code (1201 ...) rather than as a failed payload.
SIGNAL_SETTLE = 2.0


@dataclass(frozen=True)
class Step:
    name: str  # also its key in the job's timing
    action: Callable[[JobRun], Optional[bool]]  # False: the step did not get to its mark
    mark: str  # the journal mark it reaches
    state: Optional[str]  # the state the job shows while it runs
    announce: str  # "send" an update before it, "enter" it for the next heartbeat, "started": the step
    #                sends it once its work has started, "final": the heartbeat stops before it
    always: bool = False  # runs even after the job failed
    lost_code: Optional[ErrorCode] = None  # what its failure means in a recovered (lost) job


class JobRun:
    def __init__(self, job: Job, ctx: PilotContext, workdir: Path, getjob_seconds: float = 0.0) -> None:
        self.job = job
        self.ctx = ctx
        self.workdir = workdir
        self.dirs = JobDir(workdir)
        self.timing: dict[str, float] = {"getjob": getjob_seconds}
        self.started = time.time()
        self.payload: Optional[Payload] = None
        self.launcher: Optional[Launcher] = None
        self.monitor: Optional[Monitor] = None
        self.error: Optional[PilotError] = None
        self.exit_code: Optional[int] = None
        self.report: Optional[FinalReport] = None
        self.reported = False
        self.recovering = False
        self.cache_hook = CacheHook(ctx.pcache) if ctx.pcache is not None else None
        self.stager = Stager(ctx.queue, ctx.registry, ctx.control.cancel,
                             hooks=[self.cache_hook] if self.cache_hook is not None else ())
        self.journal: Journal
        self.cores = cores_for(job, ctx.queue)
        self.release: Optional[Release] = None
        self.transformation: Optional[Path] = None  # an analysis job's downloaded script
        self.prepared = False  # the setup step ran (a job resumed after stage-in does it again)

    # --- the ways in ----------------------------------------------------------------------------------
    def run(self) -> JobResult:
        """A new job: a new work dir and journal, then every step."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=False)
            self.dirs.payload.mkdir()
        except OSError as exc:
            code = ErrorCode.NO_LOCAL_SPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ErrorCode.MKDIR
            error = PilotError(code, f"cannot create the work dir {self.workdir}: {exc.strerror}")
            return report_unrun(self.ctx, self.job.panda_id, self.job.attempt_nr, self.job.raw, error, None)
        with job_log(self.workdir):
            log.info("job %d (attempt %d) in %s", self.job.panda_id, self.job.attempt_nr, self.workdir)
            self.journal = Journal.create(self.workdir, self.job.panda_id, self.job.attempt_nr,
                                          self.ctx.queue.name, self.ctx.node.host, _without_secrets(self.job.raw),
                                          self.ctx.owner())
            return self._walk()

    @classmethod
    def resume(cls, journal: Journal, ctx: PilotContext, error: Optional[PilotError] = None,
               recovering: bool = False) -> JobResult:
        """Re-enter the job of `journal` (its work dir is the journal's) at the step it reached. `error`
        fails the job from here on (e.g. its payload never ended). When `recovering` a job its pilot
        lost, a step that fails now fails the job with that step's lost-job code (1154, 1155). Raises
        JobDefinitionError when the journal's job definition is not a valid one."""
        run = cls(parse_job(journal.job), ctx, journal.path.parent)
        run.journal = journal
        run.recovering = recovering
        run.started = journal.steps.get("created", run.started)
        run.exit_code = journal.outcome.get("payload_done", {}).get("exit_code")
        if journal.error is not None:
            run.error = _error_of(journal.error.get("code"), journal.error.get("diag"))
        if error is not None:
            run._fail(error)
        with job_log(run.workdir):
            log.info("job %d (attempt %d) resumed in %s after '%s'", journal.panda_id, journal.attempt_nr,
                     run.workdir, journal.step)
            return run._walk()

    # --- the walk -----------------------------------------------------------------------------------
    def _walk(self) -> JobResult:
        self.reporter = Reporter(self.ctx.dispatcher, self.ctx.control, self.journal, self.ctx.identity)
        if self.journal.state:
            self.reporter.enter(self.journal.state)
        self.heartbeat = Heartbeat(self.reporter, self.ctx.config.heartbeat or self.ctx.queue.heartbeat,
                                   self.ctx.queue.debug_heartbeat)
        try:
            for step in STEPS:
                if self.journal.has_reached(step.mark) or (self.error is not None and not step.always):
                    continue
                self._do(step)
        finally:
            self.heartbeat.stop()
            self._kill_payload()
        if self.reported and not self.ctx.config.keep_workdirs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self._result()

    def _do(self, step: Step) -> None:
        """Run one step; a kill request (signal, server, monitor) overrides what a failing work step saw.
        A refusal of the pilot's credentials stops everything (the journal keeps the job for recovery)."""
        control = self.ctx.control
        if step.announce == "send" and step.state:
            self.reporter.try_send(step.state)
        elif step.announce == "enter" and step.state:
            self.reporter.enter(step.state)
        elif step.announce == "final":
            self.heartbeat.stop()
        if step.announce != "final" and not self.heartbeat.is_alive() and self.heartbeat.ident is None:
            self.heartbeat.start()
        begin = time.monotonic()
        done: Optional[bool] = None
        try:
            done = step.action(self)
        except DispatcherError as exc:
            if exc.kind is FailureKind.AUTH:
                raise
            self._fail(self._lost(step, exc))
            return
        except PilotError as exc:
            self._fail(control.job_kill if control.job_kill is not None and not step.always else self._lost(step, exc))
            return
        except Exception as exc:  # a pilot bug must still end in a report, not a lost job
            log.exception("unexpected error in job %d (%s)", self.job.panda_id, step.name)
            self._fail(self._lost(step, PilotError(ErrorCode.UNKNOWN_EXCEPTION, f"{type(exc).__name__}: {exc}")))
            return
        finally:
            self.timing[step.name] = self.timing.get(step.name, 0.0) + time.monotonic() - begin
        if control.job_kill is not None and not step.always:
            self._fail(control.job_kill)
        if done is not False and not self.journal.has_reached(step.mark):
            outcome: dict[str, Any] = {"error_code": int(self.error.code) if self.error else 0,
                                       "diag": self.error.diag if self.error else ""}
            if step.mark == "payload_done":
                outcome["exit_code"] = self.exit_code
            self.journal.reach(step.mark, **outcome)

    def _lost(self, step: Step, error: PilotError) -> PilotError:
        if self.recovering and step.lost_code is not None:
            return PilotError(step.lost_code, f"lost job, {step.name}: {error.code} {error.diag}")
        return error

    def _fail(self, error: PilotError) -> None:
        if self.error is None:
            error = local_space_error(error, self.workdir, tail(self.dirs.stderr, 4096)) or error
            if error.code == ErrorCode.NO_LOCAL_SPACE:  # room for the journal, the log and the tarball
                give_back_reserve(self.workdir.parent)
            self.error = error
            log.error("job %d failed: %d %s", self.job.panda_id, error.code, error.diag)
            self.journal.fail(int(error.code), error.diag)

    # --- steps ------------------------------------------------------------------------------------
    def _setup(self) -> bool:
        """Before anything is staged: the release is installed, the inputs fit the site's policy and the
        disk, an analysis job's transformation comes from a trusted place. Its mark is stage-in's."""
        self._find_release()
        check_inputs(self.job, self.ctx.queue, self.dirs.payload,
                     lambda lfn: self.journal.file_info("in", lfn) is not None)
        self._fetch_transformation()
        self.prepared = True
        return False

    def _find_release(self) -> None:
        self.release = find_release(self.job, self.ctx.queue)
        if self.release is not None:
            log.info("release %s (%s) found in %s", self.release.name, self.release.platform, self.release.path)

    def _fetch_transformation(self) -> None:
        if is_url(self.job.transformation):
            self.transformation = Downloader.for_queue(self.ctx.queue).fetch(self.job.transformation,
                                                                             self.dirs.payload)

    def _stage_in(self) -> None:
        try:
            self.stager.stage_in(self.job, self.dirs.payload, self.journal)
        finally:
            if self.cache_hook is not None:
                self.cache_hook.release()  # entries whose get failed: other pilots need not wait for them

    def _run_payload(self) -> None:
        control, queue, dirs = self.ctx.control, self.ctx.queue, self.dirs
        begin = time.monotonic()
        if not self.prepared:
            self._find_release()
            self._fetch_transformation()
        argv = build_command(self.job, dirs.payload, self.transformation)
        wrapped = needs_wrapper(self.release, queue)
        if wrapped:
            argv = wrap(argv, write_wrapper(dirs, self.job.panda_id, queue))
        credentials = tuple(name.strip() for name in queue.payload_credentials.split(",") if name.strip())
        env = payload_env(self.job, dirs.payload, dict(os.environ), credentials, self.cores,
                          release_env(self.job, self.release))
        try:
            self.launcher = self.ctx.launcher or make_launcher(queue, self.ctx.config.workdir)
        except ValueError as exc:
            raise PilotError(ErrorCode.SETUP_FAILURE, str(exc)) from None
        launch = self.launcher.prepare(self.job, dirs, argv, env)  # the job fails here, before any payload
        tracker = new_tracker(f"{self.job.panda_id}-{self.job.attempt_nr}")
        where = {"cgroup": str(tracker.path)} if isinstance(tracker, CgroupTracker) else {}
        self.journal.payload_started(**where)  # on disk before the payload exists: a later pilot can end it
        self.payload = Payload(launch.argv, dirs.payload, launch.env, tracker)
        limits = Limits.for_job(self.job, queue, self.ctx.deadline, self.cores)
        self.monitor = Monitor(self.payload, dirs.payload, limits, queue)
        self.timing["setup"] = self.timing.get("setup", 0.0) + time.monotonic() - begin
        if control.job_kill is not None:
            tracker.close()
            raise control.job_kill
        try:
            self.payload.start(control.wake)
            assert self.payload.proc is not None
            self.journal.payload_started(**process_identity(self.payload.proc.pid), **where)
            self.reporter.keep(core_count=self.cores, start_time=utc(self.started))
            self.reporter.try_send("running")
            reason = watch(self.payload, self.monitor, control)
        finally:
            self._kill_payload()
        code = self.payload.returncode
        self.exit_code = 128 - code if code is not None and code < 0 else code
        log.info("payload ended with exit code %s after %.1f s", self.exit_code,
                 self.payload.ended - self.payload.started)
        # Killed by a signal (code < 0), or a shell whose child was (128 + N): the batch system may have
        # signalled the payload with the pilot.
        signalled = self.exit_code is not None and 128 < self.exit_code < 160
        if reason is None and signalled and control.stopping.wait(SIGNAL_SETTLE):
            reason = signal_error(control.signum or self.exit_code - 128)
        if wrapped:
            log_setup_output(dirs.setup_log)
        failed_setup = setup_failure(dirs.setup_log, self.exit_code) if wrapped and self.exit_code else None
        launcher_error = self.launcher.exit_error(self.exit_code, dirs)
        if reason is not None:
            self._fail(reason)
        elif launcher_error is not None:
            self._fail(launcher_error)
        elif failed_setup is not None:
            self._fail(failed_setup)
        elif self.exit_code != 0:
            detail = last_line(dirs.stderr)
            self._fail(PilotError(ErrorCode.PAYLOAD_FAILED,
                                  f"payload exited with code {self.exit_code}" + (f": {detail}" if detail else "")))

    def _stage_out_outputs(self) -> None:
        files = [(spec, self.dirs.payload / spec.lfn) for spec in self.job.outputs]
        self.stager.stage_out(self.job, files, self.journal)

    def _kill_payload(self) -> None:
        """Whatever happened, nothing of the payload outlives its job, nor any copy of the user's proxy."""
        if self.payload is not None and self.payload.proc is not None:
            if not self.payload.exited.is_set():
                self.payload.kill(self.ctx.queue.kill_grace)
            elif self.payload.returncode is None:
                self.payload.reap()
        if self.launcher is not None:
            self.launcher.cleanup(self.dirs)

    def _ship_log(self) -> None:
        """The log tarball goes out whatever happened, even after a kill (with a fresh cancel flag)."""
        if self.journal.file_info("out", self.job.log.lfn) is not None:
            return  # shipped before (a resumed job)
        stager = Stager(self.ctx.queue, self.ctx.registry, threading.Event())
        try:
            queue = self.ctx.queue
            tarball = make_log_tarball(self.dirs, self.job.log.lfn, queue.log_gzip_level,
                                       queue.log_stdout_max << 20)
            stager.stage_out(self.job, [(self.job.log, tarball)], self.journal)
        except PilotError as exc:
            log.error("log of job %d not shipped: %s", self.job.panda_id, exc.diag)
            if exc.code == ErrorCode.LOGFILE_CREATION:
                raise
            raise PilotError(exc.code, f"log: {exc.diag}") from None

    def _final_report(self) -> bool:
        """Put the report together (or take the one a dead pilot already owed) and deliver it."""
        if self.journal.final is not None:
            self.report = FinalReport.from_owed(self.job.panda_id, self.job.attempt_nr, self.journal.final)
        else:
            if self.journal.save_failures:  # a pilot dying meanwhile would have left a stale journal
                log.warning("job %d: %s; the report says so", self.job.panda_id,
                            journal_note(self.journal.save_failures, self.journal.save_error))
            self.report = final_report(self._facts())
            if self.error is None and self.report.state == "failed":  # the report itself could not be made
                self.error = _error_of(self.report.error_code, self.report.fields.get("pilot_error_diag"))
        self.reported = send_final(self.ctx.dispatcher, self.ctx.identity, self.report, self.journal)
        return self.reported

    # --- what the report says -----------------------------------------------------------------------
    def _facts(self) -> JobFacts:
        facts = JobFacts.from_journal(self.job, self.journal, error=self.error, exit_code=self.exit_code,
                                      timing=self.timing, started=self.started, cores=self.cores,
                                      cpu_model=self.ctx.node.cpu_model)
        payload, monitor = self.payload, self.monitor
        if payload is not None and payload.proc is not None:
            facts.cpu_seconds = payload.cpu_seconds
            facts.wall_seconds = max(0.0, (payload.ended or time.time()) - payload.started)
        if monitor is not None:  # the payload's own tree, this job only
            facts.max_rss_kb, facts.max_pss_kb = monitor.max_rss_kb, monitor.max_pss_kb
            facts.max_vmem_kb, facts.max_swap_kb = monitor.max_vmem_kb, monitor.max_swap_kb
        return facts

    def _result(self) -> JobResult:
        report = self.report
        state = report.state if report is not None else ("failed" if self.error else "finished")
        log_entry = self.journal.file_info("out", self.job.log.lfn)
        return JobResult(
            panda_id=self.job.panda_id, state=state,
            error_code=report.error_code if report is not None else (int(self.error.code) if self.error else 0),
            diag=self.error.diag if self.error else "",
            exit_code=self.exit_code, timing=dict(self.timing),
            bytes_in=moved_bytes(self.journal, "in"), bytes_out=moved_bytes(self.journal, "out"), workdir=self.workdir,
            reported=self.reported or self.journal.has_reached("reported"),
            log_location=str(log_entry["location"]) if log_entry else "",
        )


def _error_of(code: Any, diag: Any) -> PilotError:
    """A job error as a journal or report keeps it (a code the table lacks reads as a general error)."""
    try:
        return PilotError(ErrorCode(int(code)), str(diag or ""))
    except (TypeError, ValueError):
        return PilotError(ErrorCode.GENERAL, f"error {code!r}: {diag or ''}")


STEPS: tuple[Step, ...] = (
    Step("setup", JobRun._setup, "staged_in", "starting", "send",  # release, input policy, transformation
         lost_code=ErrorCode.LOST_JOB_NOT_FINISHED),
    Step("stagein", JobRun._stage_in, "staged_in", "starting", "enter", lost_code=ErrorCode.LOST_JOB_NOT_FINISHED),
    Step("payload", JobRun._run_payload, "payload_done", "running", "started",
         lost_code=ErrorCode.LOST_JOB_NOT_FINISHED),
    Step("stageout", JobRun._stage_out_outputs, "outputs_done", "transferring", "enter",
         lost_code=ErrorCode.LOST_JOB_FILE_TRANSFER),
    Step("log", JobRun._ship_log, "staged_out", "transferring", "enter", always=True,
         lost_code=ErrorCode.LOST_JOB_LOG_REGISTRATION),
    Step("report", JobRun._final_report, "reported", None, "final", always=True),
)


def _without_secrets(raw: dict[str, str]) -> dict[str, str]:
    """The job definition as the journal keeps it: the user's proxy stays out of it."""
    return {k: v for k, v in raw.items() if k != "userProxy"}


def report_unrun(ctx: PilotContext, panda_id: int, attempt_nr: int, raw: dict[str, Any], error: PilotError,
                 workdir: Optional[Path]) -> JobResult:
    """A job that never started (a broken definition, no work dir) is reported failed at once. If the
    dispatcher cannot take that report, it is kept in a journal in `workdir`, for recovery."""
    report = FinalReport.failure(panda_id, attempt_nr, error)
    result = JobResult(panda_id, "failed", int(error.code), error.diag, workdir=workdir, reported=True)
    if send_final(ctx.dispatcher, ctx.identity, report):
        return result
    result.reported = False
    if workdir is None:
        log.error("job %d: no work dir to keep its report in", panda_id)
        return result
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        journal = Journal.create(workdir, panda_id, attempt_nr, ctx.queue.name, ctx.node.host,
                                 {str(k): str(v) for k, v in raw.items()}, ctx.owner())
        journal.fail(int(error.code), error.diag)
        journal.owe_final(report.owed())
        journal.reach("staged_out")
    except OSError as exc:
        log.error("job %d: report kept nowhere: %s", panda_id, exc)
    return result
