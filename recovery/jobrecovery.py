"""JobRecovery: find the jobs a dead pilot left, end what is left of their payload, finish them.

A pilot runs it before asking for its first job (unless switched off), and `pandapilot recover` runs it
alone. It looks at every job work dir (`PanDA_Pilot-<PandaID>-<attempt>`) in the work area (the pilot's
work directory and the queue's `recovery_dir`, each with the work dirs of other pilots one level down),
and takes a job when:
- its journal is of this site (queue) and still owes something (not `reported`);
- its owner is dead: no process of that PID, or one with another start time, or another boot of the
  node; for an owner on another node (a shared recovery dir), a journal older than two heartbeat
  periods (a live owner rewrites it at every heartbeat);
- the lock `recovery.lock` can be created in the work dir (O_CREAT|O_EXCL; a lock whose holder is dead,
  by the same rule, is stale and is broken, under a second exclusive lock, so that one pilot breaks it).
The attempt count is written back to the journal before any work, so two pilots never take the same
job, and a job that keeps killing its pilots stops after MAX_ATTEMPTS (failed 1158, journal set aside).

Then, for each job taken (at most MAX_JOBS per pilot):
1. what is left of the dead pilot's payload is killed (recovery/leftovers.py);
2. the dispatcher is asked for the job's status: a job it already has in a final state, or whose
   attempt number moved on (another pilot runs the job again), is only cleaned up locally;
3. otherwise the job is re-entered through JobRun.resume at the step its journal reached: partial
   files it left in storage are removed, an output already in storage with the right size and checksum
   is recorded instead of sent again, the others are staged out, the log shipped if missing, and the
   final report sent (the one the dead pilot owed, if any). A payload that never ended cannot be
   recovered: the job is reported failed 1153 (its log still shipped); a stage-out or log that fails
   now is 1155 / 1154;
4. the work dir is removed once the dispatcher has the final report; else the lock is released and a
   later pilot tries again.
A journal that cannot be read is set aside (`journal.json.corrupt`) and logged, and the job is reported
failed (1156) when its PandaID can be read from the work dir's name. Nothing here ends the pilot but a
refusal of its credentials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pilot.dispatcher.base import DispatcherError, FailureKind, JobStatus
from pilot.errors import ErrorCode, PilotError
from pilot.fsutil import loads_json, read_capped
from pilot.job import JobDefinitionError, parse_job
from pilot.jobrun import JobRun, PilotContext
from pilot.journal import Journal, boot_id
from pilot.layout import JOURNAL, JOURNAL_ASIDE, RECOVERY_LOCK, parse_job_dir
from pilot.report import FinalReport, send_final
from recovery.leftovers import START_TOLERANCE, end_payload, payload_processes
from recovery.storage import tidy_storage

log = logging.getLogger(__name__)

MAX_JOBS = 20  # jobs one pilot recovers
MAX_ATTEMPTS = 15  # recoveries of one job
# What a dispatcher shows once it has a job's final report ("holding": the server's Adder has yet to
# finish it).
FINAL_AT_DISPATCHER = frozenset({"finished", "failed", "cancelled", "closed", "holding", "merging"})
BREAK_LOCK = RECOVERY_LOCK + ".break"
MAX_LOCK = 4096


@dataclass
class Summary:
    """What one recovery pass did, by PandaID."""

    recovered: list[int] = field(default_factory=list)  # final report delivered by this pilot
    cleaned: list[int] = field(default_factory=list)  # the dispatcher had it already: only cleaned up
    exhausted: list[int] = field(default_factory=list)  # out of attempts: failed 1158, journal aside
    corrupt: list[str] = field(default_factory=list)  # work dirs whose journal was set aside
    undelivered: list[int] = field(default_factory=list)  # left for a later pilot
    scanned: int = 0

    @property
    def taken(self) -> int:
        return len(self.recovered) + len(self.cleaned) + len(self.exhausted) + len(self.undelivered)


def owner_alive(owner: dict[str, Any], updated: float, now: float, max_age: float, node: str) -> bool:
    """Whether the pilot that owns (or locks) a job may still be alive."""
    if not isinstance(owner, dict) or not owner:
        return now - updated < max_age
    if owner.get("node") not in (None, "", node):
        return now - updated < max_age  # another node: only the age can tell
    if owner.get("boot_id") and owner.get("boot_id") != boot_id():
        return False
    pid, start = owner.get("pid"), owner.get("start_time")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return now - updated < max_age
    try:
        import psutil

        found = psutil.Process(pid).create_time()
    except Exception:
        return False
    if isinstance(start, (int, float)) and abs(found - start) >= START_TOLERANCE:
        return False  # the PID was reused
    return True


class JobRecovery:
    def __init__(self, ctx: PilotContext, areas: list[Path], max_jobs: int = MAX_JOBS,
                 max_attempts: int = MAX_ATTEMPTS, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.areas = [Path(a) for a in areas]
        self.max_jobs = max_jobs
        self.max_attempts = max_attempts
        self.clock = clock
        self.me = ctx.owner()
        heartbeat = ctx.config.heartbeat or ctx.queue.heartbeat
        self.max_age = 2 * heartbeat

    # --- finding leftovers --------------------------------------------------------------------------
    def job_dirs(self) -> Iterator[Path]:
        """Job work dirs in the work area: directly in each area, or one level down (another pilot's
        work directory). Links are not followed."""
        seen: set[tuple[str, int]] = set()
        for area in self.areas:
            for entry in _dirs(area):
                if parse_job_dir(entry.name) is not None:
                    key = _inode(entry)
                    if key not in seen:
                        seen.add(key)
                        yield Path(entry.path)
                else:
                    for inner in _dirs(Path(entry.path)):
                        if parse_job_dir(inner.name) is not None and _inode(inner) not in seen:
                            seen.add(_inode(inner))
                            yield Path(inner.path)

    def eligible(self, workdir: Path) -> Optional[Journal]:
        """The journal of a job this pilot should take (None: leave it). A corrupt journal raises
        ValueError."""
        try:
            journal = Journal.load(workdir / JOURNAL)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        if journal.site != self.ctx.queue.name:
            log.debug("%s: a job of site %s, not ours", workdir, journal.site)
            return None
        if journal.has_reached("reported"):
            return None  # nothing owed: a work dir kept on purpose
        if owner_alive(journal.owner, journal.updated, self.clock(), self.max_age, self.ctx.node.host):
            return None
        return journal

    # --- the pass --------------------------------------------------------------------------------------
    def run(self) -> Summary:
        summary = Summary()
        for workdir in self.job_dirs():
            if summary.taken >= self.max_jobs:
                log.info("recovered the maximum of %d job(s) in this pilot", self.max_jobs)
                break
            summary.scanned += 1
            try:
                self._one(workdir, summary)
            except DispatcherError as exc:
                if exc.kind is FailureKind.AUTH:
                    raise
                log.error("recovery of %s stopped: %s", workdir, exc.diag)
            except Exception:  # one broken leftover never stops the pilot
                log.exception("recovery of %s failed", workdir)
        if summary.taken or summary.corrupt:
            log.info("recovery: %d reported, %d cleaned up, %d out of attempts, %d left for later, "
                     "%d unreadable journal(s)", len(summary.recovered), len(summary.cleaned),
                     len(summary.exhausted), len(summary.undelivered), len(summary.corrupt))
        return summary

    def _one(self, workdir: Path, summary: Summary) -> None:
        try:
            journal = self.eligible(workdir)
        except ValueError as exc:
            self._corrupt(workdir, str(exc), summary)
            return
        if journal is None:
            return
        with self._locked(workdir, journal) as taken:
            if not taken:
                return
            try:  # under the lock: the journal as it is now (another pilot may have finished the job)
                journal = self.eligible(workdir)
            except ValueError as exc:
                self._corrupt(workdir, str(exc), summary)
                return
            if journal is None:
                return
            if journal.recovery_attempts >= self.max_attempts:
                self._exhausted(workdir, journal, summary)
                return
            journal.take(self.me)  # the attempt is counted before anything is done
            log.info("recovering job %d (attempt %d) from %s: reached '%s', recovery attempt %d",
                     journal.panda_id, journal.attempt_nr, workdir, journal.step, journal.recovery_attempts)
            self._recover(workdir, journal, summary)

    def _recover(self, workdir: Path, journal: Journal, summary: Summary) -> None:
        survivors = end_payload(journal.payload)
        status = self._status(journal.panda_id)
        if status is None:
            summary.undelivered.append(journal.panda_id)
            return
        if self._done_elsewhere(journal, status):
            self._clean(workdir)
            summary.cleaned.append(journal.panda_id)
            return
        error: Optional[PilotError] = None
        if not journal.has_reached("payload_done"):
            error = PilotError(ErrorCode.LOST_JOB_NOT_FINISHED,
                               f"lost job: its pilot died before the payload ended (after '{journal.step}')")
        elif survivors:
            error = PilotError(ErrorCode.LOST_JOB_RECOVERY_FAILED,
                               f"lost job: payload processes {survivors} do not end")
        try:
            job = parse_job(journal.job)
        except JobDefinitionError as exc:
            if journal.final is not None:  # a job that never ran (a broken definition): its report is owed
                report = FinalReport.from_owed(journal.panda_id, journal.attempt_nr, journal.final)
                if send_final(self.ctx.dispatcher, self.ctx.identity, report, journal):
                    self._clean(workdir)
                    summary.recovered.append(journal.panda_id)
                else:
                    summary.undelivered.append(journal.panda_id)
                return
            self._report_failure(journal.panda_id, journal.attempt_nr,
                                 PilotError(ErrorCode.LOST_JOB_RECOVERY_FAILED, f"lost job: {exc.diag}"))
            _set_aside(workdir / JOURNAL, JOURNAL_ASIDE[0])
            summary.corrupt.append(str(workdir))
            return
        if error is None and journal.final is None:
            tidy_storage(self.ctx, job, journal)
        result = JobRun.resume(journal, self.ctx, error=error, recovering=True)
        (summary.recovered if result.reported else summary.undelivered).append(journal.panda_id)

    def _status(self, panda_id: int) -> Optional[JobStatus]:
        try:
            return self.ctx.dispatcher.job_status(panda_id)
        except DispatcherError as exc:
            if exc.kind is FailureKind.AUTH:
                raise
            log.error("job %d: the dispatcher cannot say what it knows of it (%s): left for later", panda_id,
                      exc.diag)
            return None

    @staticmethod
    def _done_elsewhere(journal: Journal, status: JobStatus) -> bool:
        if status.attempt_nr is not None and status.attempt_nr != journal.attempt_nr:
            log.info("job %d: the dispatcher is at attempt %d, this is %d: only cleaned up", journal.panda_id,
                     status.attempt_nr, journal.attempt_nr)
            return True
        if status.status.lower() in FINAL_AT_DISPATCHER:
            log.info("job %d: the dispatcher has it %s already: only cleaned up", journal.panda_id, status.status)
            return True
        return False

    def _clean(self, workdir: Path) -> None:
        if not self.ctx.config.keep_workdirs:
            shutil.rmtree(workdir, ignore_errors=True)

    def _report_failure(self, panda_id: int, attempt_nr: int, error: PilotError) -> bool:
        """Report a job failed unless the dispatcher has it final already (or runs a newer attempt)."""
        status = self._status(panda_id)
        if status is None:
            return False
        if status.status.lower() in FINAL_AT_DISPATCHER or (
                status.attempt_nr is not None and status.attempt_nr != attempt_nr):
            return True
        return send_final(self.ctx.dispatcher, self.ctx.identity, FinalReport.failure(panda_id, attempt_nr, error))

    def _exhausted(self, workdir: Path, journal: Journal, summary: Summary) -> None:
        end_payload(journal.payload)
        error = PilotError(ErrorCode.RECOVERY_ATTEMPTS_EXHAUSTED,
                           f"lost job: {journal.recovery_attempts} recovery attempts, giving up")
        log.error("job %d: %s", journal.panda_id, error.diag)
        if self._report_failure(journal.panda_id, journal.attempt_nr, error):
            _set_aside(workdir / JOURNAL, JOURNAL_ASIDE[1])
            summary.exhausted.append(journal.panda_id)
        else:
            summary.undelivered.append(journal.panda_id)

    def _corrupt(self, workdir: Path, why: str, summary: Summary) -> None:
        path = workdir / JOURNAL
        try:
            if self.clock() - path.lstat().st_mtime < self.max_age:
                log.warning("unreadable journal %s (%s): left alone while its pilot may be alive", path, why)
                return
        except FileNotFoundError:
            return
        with self._locked(workdir, None) as taken:
            if not taken or not _set_aside(path, JOURNAL_ASIDE[0]):
                return
            log.error("unreadable journal %s set aside: %s", path, why)
            summary.corrupt.append(str(workdir))
            ids = parse_job_dir(workdir.name)
            if ids is not None:
                error = PilotError(ErrorCode.LOST_JOB_RECOVERY_FAILED, f"lost job: its journal is unreadable ({why})")
                self._report_failure(ids[0], ids[1], error)

    # --- the lock ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, workdir: Path, journal: Optional[Journal]) -> Iterator[bool]:
        """Hold `recovery.lock` in the work dir (False: another live pilot holds it)."""
        lock = workdir / RECOVERY_LOCK
        taken = self._take(lock, journal)
        try:
            yield taken
        finally:
            if taken:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)  # the work dir may be gone already

    def _take(self, lock: Path, journal: Optional[Journal]) -> bool:
        body = json.dumps(self.me).encode()
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                if not self._break_stale(lock, journal):
                    return False
                continue
            except OSError as exc:
                log.error("cannot lock %s: %s", lock, exc)
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        return False

    def _holder(self, lock: Path) -> tuple[Optional[dict[str, Any]], float]:
        try:
            mtime = lock.lstat().st_mtime
            holder = loads_json(read_capped(lock, MAX_LOCK))
        except FileNotFoundError:
            return {}, 0.0  # gone: free
        except (OSError, ValueError):
            return None, mtime if "mtime" in locals() else 0.0  # half-written: judged by its age alone
        return (holder if isinstance(holder, dict) else None), mtime

    def _break_stale(self, lock: Path, journal: Optional[Journal]) -> bool:
        """Remove a lock whose holder is dead; True when the lock may be taken now. One pilot at a time
        breaks it (under BREAK_LOCK), and only the lock it judged stale."""
        holder, mtime = self._holder(lock)
        if holder == {} and mtime == 0.0:
            return True
        updated = max(mtime, journal.updated if journal is not None else 0.0)
        if owner_alive(holder or {}, updated, self.clock(), self.max_age, self.ctx.node.host):
            return False
        breaker = lock.with_name(BREAK_LOCK)
        try:
            os.close(os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            with contextlib.suppress(OSError):  # a breaker that died half-way leaves an old breaker lock
                if self.clock() - breaker.lstat().st_mtime > 60:
                    os.unlink(breaker)
            return False
        except OSError:
            return False
        try:
            if self._holder(lock) == (holder, mtime):  # still the stale one: break it
                log.warning("breaking the stale recovery lock %s of %s", lock, holder)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
                return True
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(breaker)


def _dirs(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return [e for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _inode(entry: os.DirEntry) -> tuple[str, int]:
    """Identifies a dir seen through two areas (the inode comes with the directory listing)."""
    return os.path.dirname(os.path.realpath(entry.path)), entry.inode()


def _set_aside(path: Path, name: str) -> bool:
    try:
        os.replace(path, path.with_name(name))
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("cannot set %s aside: %s", path, exc)
        return False


def panda_id_of_corrupt(data: bytes) -> Optional[int]:
    match = re.search(rb'"panda_id":\s*(\d{1,19})', data)
    return int(match.group(1)) if match else None


__all__ = ["JobRecovery", "Summary", "owner_alive", "payload_processes"]
