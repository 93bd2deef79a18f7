"""What a job leaves behind for the dispatcher: the final report, the job log file, the log tarball,
metrics and tails.

The final report is one value (FinalReport), put together in one place (final_report) from what the
job run knows (JobFacts), and delivered by one sender (send_final): the normal run, a job that never ran
and a recovered job all go through them. The sender keeps the report owed in the journal until the
dispatcher has taken it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pilot.diskspace import QuietFileHandler
from pilot.dispatcher.base import Dispatcher, DispatcherError, FailureKind, JobUpdate
from pilot.errors import ErrorCode, PilotError, one_line
from pilot.fsutil import UntrustedFile, loads_json, open_untrusted, read_capped, tail_untrusted
from pilot.layout import PILOT_LOG, JobDir
from pilot.staging import Transferred, output_report
from sitemovers.base import Outcome
from sitemovers.checksum import Checksum

if TYPE_CHECKING:
    from pilot.job import Job
    from pilot.journal import Journal

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s | %(message)s"
MAX_JOB_REPORT = 4 * 2**20  # a bigger job report is not sent as metaData
TIMING_KEYS = ("getjob", "stagein", "payload", "stageout", "setup")
CPU_UNIT_MAX = 128  # characters the server's cpuConsumptionUnit column holds


@contextlib.contextmanager
def job_log(workdir: Path) -> Iterator[Path]:
    """Everything the pilot logs while this job runs also goes to the job's own log file."""
    path = workdir / PILOT_LOG
    try:
        handler: Optional[logging.Handler] = QuietFileHandler(path)  # a full disk cannot break it
    except OSError as exc:
        log.error("no job log file %s: %s", path, exc)
        handler = None
    root = logging.getLogger()
    if handler is not None:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    try:
        yield path
    finally:
        if handler is not None:
            root.removeHandler(handler)
            handler.close()


def tail(path: Path, limit: int) -> str:
    """The last `limit` characters of a text file ('' when absent, a link or not a regular file)."""
    return tail_untrusted(path, limit)


def last_line(path: Path) -> str:
    lines = [line for line in tail(path, 4096).splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else ""


def read_job_report(path: Path) -> Optional[dict[str, Any]]:
    """The payload's job report at `path`, if it wrote a valid one (a broken one, a link or a special
    file is logged and ignored)."""
    try:
        data = loads_json(read_capped(path, MAX_JOB_REPORT))
    except FileNotFoundError:
        return None
    except UntrustedFile as exc:
        log.warning("job report %s not read: %s", path.name, exc.strerror)
        return None
    except (OSError, ValueError) as exc:
        log.warning("job report %s is not valid JSON: %s", path.name, exc)
        return None
    if not isinstance(data, dict):
        log.warning("job report %s is not a JSON object", path.name)
        return None
    return data


def make_log_tarball(dirs: JobDir, name: str, level: int = 1, stdout_max: int = 0) -> Path:
    """The job's logs as `name` (a .tgz) in the job's (pilot-private) dir, under a directory named after
    it, packed at gzip `level`; of the payload's stdout and stderr only the last `stdout_max` bytes are
    kept (0: all). Written to a new temporary name, renamed over whatever has the name (a planted link is
    replaced, never followed). Members are opened without following links; a link or special file is
    left out."""
    target = dirs.root / name
    inner = name[: -len(".tgz")] if name.endswith(".tgz") else name
    inner = inner[: -len(".tar")] if inner.endswith(".tar") else inner
    members = (dirs.pilot_log, dirs.setup_log, dirs.stdout, dirs.stderr, dirs.job_report, dirs.journal)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dirs.root)
        try:
            with os.fdopen(fd, "wb") as handle, \
                    tarfile.open(fileobj=handle, mode="w:gz", compresslevel=level) as tar:
                for path in members:
                    keep = stdout_max if path in (dirs.stdout, dirs.stderr) else 0
                    _add_untrusted(tar, path, f"{inner}/{path.name}", keep)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, tarfile.TarError) as exc:
        raise PilotError(ErrorCode.LOGFILE_CREATION, f"cannot create log tarball {name}: {exc}") from None
    return target


def _add_untrusted(tar: tarfile.TarFile, path: Path, arcname: str, keep: int = 0) -> None:
    """Add a regular file, read through the descriptor checked at open, never more than it had then; of
    a larger file only its last `keep` bytes when keep > 0."""
    try:
        fd = open_untrusted(path)
    except FileNotFoundError:
        return
    except UntrustedFile as exc:
        log.warning("%s left out of the log tarball: %s", path.name, exc.strerror)
        return
    with os.fdopen(fd, "rb") as handle:
        info = tar.gettarinfo(arcname=arcname, fileobj=handle)
        info.uname = info.gname = ""
        if keep and info.size > keep:
            log.info("log tarball keeps the last %d of %d bytes of %s", keep, info.size, path.name)
            handle.seek(info.size - keep)
            info.size = keep
        tar.addfile(info, _Capped(handle, info.size))


class _Capped:
    """A reader giving exactly `size` bytes (zeros if the file shrank meanwhile), so that a file the
    payload still grows or truncates cannot break or bloat the tarball."""

    def __init__(self, handle: Any, size: int) -> None:
        self.handle, self.left = handle, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.handle.read(n) if n else b""
        data += bytes(n - len(data))
        self.left -= n
        return data


def pilot_timing(timing: dict[str, float]) -> str:
    return "|".join(str(int(round(timing.get(key, 0.0)))) for key in TIMING_KEYS)


def job_metrics(**metrics: Any) -> str:
    return " ".join(f"{key}={val}" for key, val in metrics.items() if val not in (None, ""))


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def cpu_unit(model: str) -> str:
    """The CPU time's unit as the server keeps it: seconds, and the CPU they were counted on."""
    return f"s+{one_line(model)}"[:CPU_UNIT_MAX] if model.strip() else "s"


def mean_cores(cpu_seconds: float, wall_seconds: float) -> Optional[int]:
    """The cores the payload kept busy on average: its CPU time over its wall time (at least 1)."""
    if wall_seconds <= 0:
        return None
    return max(1, int(round(cpu_seconds / wall_seconds)))


def full_urls(report: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each output's storage URL with its scheme: a bare path a mover returned becomes a file:// URL
    (taken literally, as the local mover reads it)."""
    for entry in report.values():
        surl = str(entry.get("surl", ""))
        if surl.startswith("/"):
            entry["surl"] = "file://" + surl
    return report


def _is_int32(value: Any) -> bool:
    """A JSON integer the server can store (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31


# --- the final report ---------------------------------------------------------------------------------
@dataclass
class FinalReport:
    """The last word about one job: its final state and the fields that go with it (v1 names)."""

    panda_id: int
    attempt_nr: int
    state: str  # finished or failed
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def error_code(self) -> int:
        return int(self.fields.get("pilot_error_code") or 0)

    def update(self, identity: dict[str, Any]) -> JobUpdate:
        return JobUpdate(job_id=self.panda_id, job_status=self.state, attempt_nr=self.attempt_nr,
                         **identity, **self.fields)

    def owed(self) -> dict[str, Any]:
        """As the journal keeps it."""
        return {"state": self.state, **self.fields}

    @classmethod
    def from_owed(cls, panda_id: int, attempt_nr: int, owed: dict[str, Any]) -> FinalReport:
        fields = {k: v for k, v in owed.items() if k != "state" and k in JobUpdate.__dataclass_fields__}
        return cls(panda_id, attempt_nr, "finished" if owed.get("state") == "finished" else "failed", fields)

    @classmethod
    def failure(cls, panda_id: int, attempt_nr: int, error: PilotError, **fields: Any) -> FinalReport:
        return cls(panda_id, attempt_nr, "failed",
                   {"pilot_error_code": int(error.code), "pilot_error_diag": error.diag, **fields})


@dataclass
class JobFacts:
    """What the job run knows when its report is put together."""

    job: Job
    workdir: Path
    error: Optional[PilotError]
    exit_code: Optional[int]
    files: list[Transferred]  # outputs and the log, as in storage
    timing: dict[str, float]
    started: float
    bytes_in: int = 0
    bytes_out: int = 0
    files_from_cache: int = 0  # inputs served by the node cache (pilot/pcache.py)
    bytes_from_cache: int = 0
    cores: int = 0  # the cores the payload was given (0: the job's coreCount)
    cpu_model: str = ""  # the node's CPU, sent with the CPU time's unit
    cpu_seconds: Optional[float] = None  # None: the payload's figures are not known (never ran, or recovered)
    wall_seconds: float = 0.0  # how long the payload ran
    max_rss_kb: int = 0  # the payload's own process tree, this job only
    max_pss_kb: int = 0
    max_vmem_kb: int = 0
    max_swap_kb: int = 0
    journal_unsaved: int = 0  # saves of the journal that failed (a full disk): said in the report
    journal_error: str = ""

    @classmethod
    def from_journal(cls, job: Job, journal: Journal, **known: Any) -> JobFacts:
        """The facts the journal keeps (the files in storage, the bytes moved, what the node cache served,
        the journal's own failed saves), with what the job run knows besides (`known`)."""
        return cls(job=job, workdir=journal.path.parent, files=stored_files(job, journal),
                   bytes_in=moved_bytes(journal, "in"), bytes_out=moved_bytes(journal, "out"),
                   files_from_cache=len(moved(journal, "in", Outcome.FROM_CACHE.value)),
                   bytes_from_cache=moved_bytes(journal, "in", Outcome.FROM_CACHE.value),
                   journal_unsaved=journal.save_failures, journal_error=journal.save_error, **known)


def stored_files(job: Job, journal: Journal) -> list[Transferred]:
    """The job's files in storage (outputs, then the log), as its journal knows them."""
    stored = []
    for spec in job.all_outputs:
        info = journal.file_info("out", spec.lfn)
        if info is not None:
            checksum = Checksum.parse(info["checksum"]) if info.get("checksum") else None
            stored.append(Transferred(spec.lfn, int(info["fsize"]), checksum, str(info["location"])))
    return stored


def moved(journal: Journal, direction: str, outcome: str = "") -> list[dict[str, Any]]:
    """The journal's records of the files moved in a direction ("in", "out"), with that outcome if given."""
    return [info for key, info in journal.files.items()
            if key.startswith(direction + ":") and (not outcome or info.get("outcome") == outcome)]


def moved_bytes(journal: Journal, direction: str, outcome: str = "") -> int:
    return sum(int(info.get("fsize", 0)) for info in moved(journal, direction, outcome))


def final_report(facts: JobFacts) -> FinalReport:
    """The job's final report. Should gathering the figures fail (a pilot bug), the report still says
    what it must: the job's error, the exit code, and the files already in storage."""
    job = facts.job
    try:
        fields = _all_fields(facts)
    except Exception as exc:
        log.exception("the final report of job %d cannot be put together", job.panda_id)
        if facts.error is None:
            facts.error = PilotError(ErrorCode.UNKNOWN_EXCEPTION, f"final report: {type(exc).__name__}: {exc}")
        fields = _essential_fields(facts)
    state = "failed" if facts.error is not None else "finished"
    return FinalReport(job.panda_id, job.attempt_nr, state, fields)


def _all_fields(facts: JobFacts) -> dict[str, Any]:
    job, error, dirs = facts.job, facts.error, JobDir(facts.workdir)
    failed = error is not None
    job_report = read_job_report(dirs.job_report)
    fields: dict[str, Any] = {
        "trans_exit_code": facts.exit_code if facts.exit_code is not None else (0 if not failed else None),
        "pilot_error_code": int(error.code) if error is not None else 0,
        "pilot_error_diag": _diag(facts),
        "core_count": facts.cores or job.core_count,
        "n_input_files": len(job.inputs),
        "start_time": utc(facts.started),
        "end_time": utc(time.time()),
        "job_output_report": full_urls(output_report(job, facts.files)) if facts.files else None,
        "pilot_timing": pilot_timing(facts.timing),
        "pilot_log": tail(dirs.pilot_log, 1024),
        "stdout": tail(dirs.stdout, 2048) or None,
    }
    if facts.cpu_seconds is not None:
        fields.update(cpu_consumption_time=int(round(facts.cpu_seconds)),
                      cpu_consumption_unit=cpu_unit(facts.cpu_model), cpu_conversion_factor=1.0,
                      mean_core_count=mean_cores(facts.cpu_seconds, facts.wall_seconds))
    fields.update(max_rss=facts.max_rss_kb or None, max_pss=facts.max_pss_kb or None,
                  max_vmem=facts.max_vmem_kb or None, max_swap=facts.max_swap_kb or None)
    if job_report is not None:
        fields["meta_data"] = json.dumps(job_report)
        exit_code, events = job_report.get("exitCode"), job_report.get("nEvents")
        if _is_int32(exit_code) and exit_code != 0:
            fields["exe_error_code"] = exit_code
            fields["exe_error_diag"] = one_line(str(job_report.get("exitMsg", "")))
        if _is_int32(events) and events >= 0:
            fields["n_events"] = events
    fields["job_metrics"] = job_metrics(coreCount=facts.cores or job.core_count, nInputFiles=len(job.inputs),
                                        bytesIn=facts.bytes_in, bytesOut=facts.bytes_out,
                                        journalUnsaved=facts.journal_unsaved or None,
                                        filesFromCache=facts.files_from_cache or None,
                                        bytesFromCache=facts.bytes_from_cache or None)
    return {k: v for k, v in fields.items() if v is not None}


def _diag(facts: JobFacts) -> Optional[str]:
    """Why the job failed, and whether its journal could not be saved. A job that finished stays finished
    when its journal could not be saved (its outputs are verified in storage and this report, once taken,
    leaves nothing to recover), but the diagnostic says so, with the error code 0."""
    note = journal_note(facts.journal_unsaved, facts.journal_error)
    if facts.error is None:
        return note or None
    return one_line(f"{facts.error.diag} ({note})") if note else facts.error.diag


def journal_note(unsaved: int, reason: str) -> str:
    return one_line(f"journal not saved {unsaved}x: {reason}") if unsaved else ""


def _essential_fields(facts: JobFacts) -> dict[str, Any]:
    assert facts.error is not None
    fields: dict[str, Any] = {"pilot_error_code": int(facts.error.code), "pilot_error_diag": facts.error.diag}
    if facts.exit_code is not None:
        fields["trans_exit_code"] = facts.exit_code
    try:
        fields["job_output_report"] = full_urls(output_report(facts.job, facts.files))
    except Exception:
        log.exception("no output report for job %d", facts.job.panda_id)
    return fields


def send_final(dispatcher: Dispatcher, identity: dict[str, Any], report: FinalReport,
               journal: Optional[Journal] = None) -> bool:
    """Deliver the final report: owed in the journal first, sent, then settled. True when the dispatcher
    took it; False when it could not (the report stays owed in the journal, for recovery). A refusal of
    the pilot's credentials is raised (the pilot stops)."""
    if journal is not None:
        journal.owe_final(report.owed())
    try:
        dispatcher.update_job(report.update(identity))
    except DispatcherError as exc:
        log.error("final report of job %d not delivered, kept in the journal: %s", report.panda_id, exc.diag)
        if exc.kind is FailureKind.AUTH:
            raise
        return False
    except Exception:  # a client bug: the report stays owed, in the journal
        log.exception("final report of job %d not delivered, kept in the journal", report.panda_id)
        return False
    if journal is not None:
        journal.settled(report.state)
    log.info("job %d %s (error %d) reported", report.panda_id, report.state, report.error_code)
    return True
