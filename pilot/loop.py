"""The multi-job loop: ask for a job, run it, and again, until a stop rule says enough."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pilot.diskspace import give_back_reserve, space_shortage
from pilot.dispatcher.base import DispatcherError, FailureKind, JobRequest
from pilot.errors import ExitCode
from pilot.identity import needs_user_proxy
from pilot.job import JobDefinitionError, parse_job
from pilot.jobrun import JobResult, JobRun, PilotContext, report_unrun
from pilot.layout import new_job_dir
from pilot.node import free_mb

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    started: float = field(default_factory=time.time)
    jobs: int = 0  # jobs taken (malformed ones included)
    failures_in_row: int = 0
    no_job_in_row: int = 0
    lost_in_row: int = 0  # of those, job requests whose reply was lost


def stop_reason(ctx: PilotContext, state: LoopState, now: float) -> Optional[str]:
    """Why the pilot should take no further job (None: carry on). Pure: reads the state, changes nothing."""
    cfg, queue, control = ctx.config, ctx.queue, ctx.control
    if control.signum is not None:
        return f"signal {control.signum}"
    if control.softkill:
        return "soft kill requested by the server"
    if cfg.stop_file is not None and cfg.stop_file.exists():
        return f"stop file {cfg.stop_file} found"
    if cfg.max_jobs and state.jobs >= cfg.max_jobs:
        return f"ran the maximum of {cfg.max_jobs} job(s)"
    if cfg.max_failures and state.failures_in_row >= cfg.max_failures:
        return f"{state.failures_in_row} failed jobs in a row"
    if cfg.max_no_job and state.no_job_in_row >= cfg.max_no_job:
        lost = f", the last {state.lost_in_row} with the reply lost" if state.lost_in_row else ""
        return f"no job in {state.no_job_in_row} consecutive requests{lost}"
    if queue.timefloor and state.jobs and now - state.started >= queue.timefloor * 60:
        return f"time floor of {queue.timefloor} min passed"
    if ctx.deadline is not None and now >= ctx.deadline - queue.time_margin:
        return "not enough lifetime left for another job"
    return None


def no_job_wait(cfg: Any, misses: int) -> float:
    """Exponential backoff with jitter after `misses` consecutive no-job answers."""
    base = min(cfg.no_job_wait * 2 ** min(max(0, misses - 1), 30), cfg.no_job_wait_max)
    return base * random.uniform(0.8, 1.0)


class Pilot:
    def __init__(self, ctx: PilotContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self.state = LoopState(started=clock())

    def request(self) -> JobRequest:
        cfg, node = self.ctx.config, self.ctx.node
        remaining = int(self.ctx.deadline - self.clock()) if self.ctx.deadline else None
        return JobRequest(
            site_name=self.ctx.queue.name,
            node=node.host,
            prod_source_label=cfg.job_label,
            computing_element=cfg.computing_element,
            memory=node.memory_mb,
            disk_space=free_mb(cfg.workdir),
            cpu=node.cpu_mhz or None,
            resource_type=cfg.resource_type,
            scheduler_id=cfg.scheduler_id or None,
            harvester_id=cfg.harvester_id,
            worker_id=cfg.worker_id,
            remaining_time=remaining,
            cached_files=self._cache_report(),
            get_proxy_key=needs_user_proxy(self.ctx.queue),  # glexec queues: the user's proxy with the job
        )

    def _cache_report(self) -> Optional[dict[str, Any]]:
        """The node cache's contents for the dispatcher; a cache that cannot be read reports nothing."""
        if self.ctx.pcache is None:
            return None
        try:
            return self.ctx.pcache.report()
        except (OSError, sqlite3.Error) as exc:
            log.warning("the node cache cannot be scanned: %s", exc)
            return None

    def run(self) -> int:
        """Run jobs until a stop rule holds; returns the pilot's exit code."""
        try:
            return self._run()
        finally:
            give_back_reserve(self.ctx.config.workdir, quiet=True)  # the space reserve is for jobs only

    def _run(self) -> int:
        ctx, state = self.ctx, self.state
        while True:
            reason = stop_reason(ctx, state, self.clock())
            if reason is not None:
                log.info("pilot stops: %s", reason)
                break
            short = space_shortage(ctx.config.workdir, ctx.queue.min_free_disk + ctx.queue.maxwdir)
            if short is not None:  # checked before every job: after a job that filled the disk, too
                log.error("pilot stops: %s", short)
                return self._signal_exit() or ExitCode.NO_SPACE
            asked = time.monotonic()
            log.debug("asking %s for a job", ctx.dispatcher.name)
            try:
                raw = ctx.dispatcher.get_job(self.request())
            except DispatcherError as exc:
                log.error("cannot get a job from %s: %s", ctx.dispatcher.name, exc.diag)
                if exc.kind is FailureKind.AUTH:
                    return ExitCode.CREDENTIALS
                if exc.kind is not FailureKind.LOST:
                    return self._signal_exit() or ExitCode.SERVER_COMMUNICATION
                raw = None  # the answer was lost: like no job, ask again after a wait
                state.lost_in_row += 1
            else:
                state.lost_in_row = 0
            getjob_seconds = time.monotonic() - asked
            if raw is None:
                state.no_job_in_row += 1
                if not ctx.config.max_no_job or state.no_job_in_row < ctx.config.max_no_job:
                    wait = no_job_wait(ctx.config, state.no_job_in_row)
                    log.info("no job; asking again in %.1f s", wait)
                    ctx.control.stopping.wait(wait)  # a signal ends the wait
                continue
            state.no_job_in_row = 0
            state.jobs += 1
            try:
                result = self.run_one(raw, getjob_seconds)
            except DispatcherError as exc:  # only a refusal of our credentials gets here
                log.error("the dispatcher refused us: %s", exc.diag)
                return ExitCode.CREDENTIALS
            if result is None or result.state == "failed":
                state.failures_in_row += 1
            else:
                state.failures_in_row = 0
            if result is not None and not result.reported:
                log.error("job %d: final report not delivered; stopping", result.panda_id)
                return self._signal_exit() or ExitCode.SERVER_COMMUNICATION
        if state.lost_in_row:  # the server kept failing: that, not a lack of jobs, ended the pilot
            return self._signal_exit() or ExitCode.SERVER_COMMUNICATION
        return self._signal_exit() or (ExitCode.OK if state.jobs else ExitCode.NO_JOBS)

    def _signal_exit(self) -> int:
        signum = self.ctx.control.signum
        return 128 + signum if signum is not None else 0

    def run_one(self, raw: dict[str, str], getjob_seconds: float) -> Optional[JobResult]:
        """Validate and run one job; a broken definition is reported failed, never run."""
        ctx = self.ctx
        ctx.control.new_job()
        try:
            job = parse_job(raw)
        except JobDefinitionError as exc:
            log.error("job definition rejected: %d %s", exc.code, exc.diag)
            if exc.panda_id is None:
                ctx.dispatcher.reject(raw, exc.diag)
                return None
            return report_unrun(ctx, exc.panda_id, exc.attempt_nr, raw, exc,
                                self._job_dir(exc.panda_id, exc.attempt_nr))
        return JobRun(job, ctx, self._job_dir(job.panda_id, job.attempt_nr), getjob_seconds).run()

    def _job_dir(self, panda_id: int, attempt_nr: int) -> Path:
        return new_job_dir(self.ctx.config.workdir, panda_id, attempt_nr)
