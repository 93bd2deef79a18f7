"""What a job leaves behind for the dispatcher: the job log file, the log tarball, metrics and tails."""

from __future__ import annotations

import contextlib
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from pilot.errors import ErrorCode, PilotError, one_line
from pilot.fsutil import UntrustedFile, loads_json, open_untrusted, read_capped, tail_untrusted
from pilot.layout import PILOT_LOG, JobDir

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


def make_log_tarball(dirs: JobDir, name: str) -> Path:
    """The job's logs as `name` (a .tgz) in the job's (pilot-private) dir, under a directory named after
    it. Written to a new temporary name, renamed over whatever has the name (a planted link is replaced,
    never followed). Members are opened without following links; a link or special file is left out."""
    target = dirs.root / name
    inner = name[: -len(".tgz")] if name.endswith(".tgz") else name
    inner = inner[: -len(".tar")] if inner.endswith(".tar") else inner
    members = (dirs.pilot_log, dirs.stdout, dirs.stderr, dirs.job_report, dirs.journal)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dirs.root)
        try:
            with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
                for path in members:
                    _add_untrusted(tar, path, f"{inner}/{path.name}")
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, tarfile.TarError) as exc:
        raise PilotError(ErrorCode.LOGFILE_CREATION, f"cannot create log tarball {name}: {exc}") from None
    return target


def _add_untrusted(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """Add a regular file, read through the descriptor checked at open, never more than it had then."""
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
