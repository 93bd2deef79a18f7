"""What a job leaves behind for the dispatcher: the job log file, the log tarball, metrics and tails."""

from __future__ import annotations

import contextlib
import json
import logging
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from pilot.errors import ErrorCode, PilotError, one_line
from pilot.layout import JOB_REPORT, JOURNAL, PILOT_LOG, SETUP_LOG, STDERR, STDOUT

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s | %(message)s"
MAX_JOB_REPORT = 4 * 2**20  # a bigger job report is not sent as metaData
TIMING_KEYS = ("getjob", "stagein", "payload", "stageout", "setup")


@contextlib.contextmanager
def job_log(workdir: Path) -> Iterator[Path]:
    """Everything the pilot logs while this job runs also goes to the job's own log file."""
    path = workdir / PILOT_LOG
    try:
        handler: Optional[logging.Handler] = logging.FileHandler(path, encoding="utf-8")
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
    """The last `limit` characters of a text file ('' when absent)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")[-limit:]
    except OSError:
        return ""


def last_line(path: Path) -> str:
    lines = [line for line in tail(path, 4096).splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else ""


def read_job_report(workdir: Path) -> Optional[dict[str, Any]]:
    """The payload's job report, if it wrote a valid one (a broken one is logged and ignored)."""
    path = workdir / JOB_REPORT
    try:
        if path.stat().st_size > MAX_JOB_REPORT:
            log.warning("job report %s is larger than %d bytes: not sent", path, MAX_JOB_REPORT)
            return None
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("job report %s is not valid JSON: %s", path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("job report %s is not a JSON object", path)
        return None
    return data


def make_log_tarball(workdir: Path, name: str) -> Path:
    """The job's logs as `name` (a .tgz) in the work dir, under a directory named after it."""
    target = workdir / name
    inner = name[: -len(".tgz")] if name.endswith(".tgz") else name
    inner = inner[: -len(".tar")] if inner.endswith(".tar") else inner
    try:
        with tarfile.open(target, "w:gz") as tar:
            for member in (PILOT_LOG, SETUP_LOG, STDOUT, STDERR, JOB_REPORT, JOURNAL):
                path = workdir / member
                if path.is_file():
                    tar.add(path, arcname=f"{inner}/{member}")
    except (OSError, tarfile.TarError) as exc:
        raise PilotError(ErrorCode.LOGFILE_CREATION, f"cannot create log tarball {name}: {exc}") from None
    return target


def pilot_timing(timing: dict[str, float]) -> str:
    return "|".join(str(int(round(timing.get(key, 0.0)))) for key in TIMING_KEYS)


def job_metrics(**metrics: Any) -> str:
    return " ".join(f"{key}={val}" for key, val in metrics.items() if val not in (None, ""))


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
