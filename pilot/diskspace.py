"""A full disk is a job's failure (1098, no local space), never the pilot's end.

- `local_space_error` tells a job that failed because its work dir's disk filled up (the payload's own
  last error line kept as the diagnostic) from one that failed for its own reasons.
- A small reserve file in the pilot's work directory is given back the moment a job runs out of space,
  so that the journal, the pilot's log and the log tarball can still be written; it is taken again
  before the next job, and when it cannot be, there is no space for another job.
- `reserve_tail` preallocates room at the end of the payload's stderr, so that the payload's last words
  ("No space left on device") are kept even when the disk is full when it writes them.
- `QuietFileHandler` is a log file handler that a full disk cannot break: a failed write is counted,
  never raised, never printed as a traceback.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any, Optional

from pilot.errors import ErrorCode, PilotError

log = logging.getLogger(__name__)

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE_TEXT = os.strerror(errno.ENOSPC)  # what a payload prints when it hits a full disk
FULL_MARGIN = 1 << 20  # bytes: less free than this under the work dir is a full disk
RESERVE = ".space-reserve"  # in the pilot's work directory
RESERVE_BYTES = 1 << 20
STDERR_RESERVE = 64 << 10  # bytes kept for the payload's last error lines

# Failures that a full work dir explains: the payload, the files it should have written, the log tarball,
# stage-in into the work dir, a pilot error on a write. Stage-out codes stay: their disk is the storage's.
LOCAL_CODES = frozenset({
    ErrorCode.PAYLOAD_FAILED, ErrorCode.EMPTY_OUTPUT, ErrorCode.MISSING_OUTPUT, ErrorCode.LOGFILE_CREATION,
    ErrorCode.UNKNOWN_EXCEPTION, ErrorCode.STAGEIN_FAILED, ErrorCode.SETUP_FAILURE, ErrorCode.GENERAL,
    ErrorCode.MKDIR, ErrorCode.TRF_DOWNLOAD_FAILED,
})


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a file system out of space or quota."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(path: Path) -> Optional[int]:
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def disk_full(path: Path, margin: int = FULL_MARGIN) -> bool:
    free = free_bytes(path)
    return free is not None and free < margin


def local_space_error(error: PilotError, workdir: Path, stderr_tail: str = "") -> Optional[PilotError]:
    """The 1098 error that explains `error`, when it is a local failure and the work dir's disk is full
    (or the payload said so); None otherwise. The diagnostic keeps the payload's last error line (from
    `stderr_tail`): the last one that names the full disk, else its last line."""
    if error.code not in LOCAL_CODES:
        return None
    lines = [line.strip() for line in stderr_tail.splitlines() if line.strip()]
    said = [line for line in lines if NO_SPACE_TEXT.lower() in line.lower()]
    if not (said or NO_SPACE_TEXT.lower() in error.diag.lower() or disk_full(workdir)):
        return None
    detail = said[-1] if said else (lines[-1] if lines else error.diag)
    return PilotError(ErrorCode.NO_LOCAL_SPACE, f"no space left on the work dir's disk: {detail}")


# --- the reserve --------------------------------------------------------------------------------------
def take_reserve(directory: Path, size: int = RESERVE_BYTES) -> bool:
    """Hold `size` bytes of the disk in a reserve file (kept when it is there); False when the disk has
    not even that much left."""
    path = Path(directory) / RESERVE
    try:
        if path.stat().st_size >= size:
            return True
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.warning("no space reserve in %s: %s", directory, exc.strerror)
        return not is_no_space(exc)
    try:
        os.posix_fallocate(fd, 0, size)
        return True
    except OSError as exc:
        os.close(fd)
        fd = -1
        give_back_reserve(directory)
        if is_no_space(exc):
            return False
        log.warning("no space reserve in %s: %s", directory, exc.strerror)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def space_shortage(workdir: Path, needed_mb: int) -> Optional[str]:
    """Why there is no room for another job under `workdir` (None: there is): the reserve cannot be
    taken, or fewer than `needed_mb` MB are free."""
    if not take_reserve(workdir):
        return f"no space left under {workdir} (not even the pilot's {RESERVE_BYTES >> 20} MB reserve)"
    free = free_bytes(workdir)
    if needed_mb > 0 and free is not None and free < needed_mb << 20:
        return f"only {free >> 20} MB free under {workdir}, a job needs {needed_mb} MB"
    return None


def give_back_reserve(directory: Path, quiet: bool = False) -> bool:
    """Free the reserve: for the pilot's own last writes of a job that filled the disk (or when the pilot
    ends, `quiet`)."""
    try:
        os.unlink(Path(directory) / RESERVE)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot free the space reserve in %s: %s", directory, exc.strerror)
        return False
    if not quiet:
        log.warning("disk full: the pilot's space reserve in %s is given back", directory)
    return True


# --- the payload's stderr -------------------------------------------------------------------------------
_FALLOC_FL_KEEP_SIZE = 0x01


def _libc_fallocate():  # type: ignore[no-untyped-def]
    """libc's fallocate, from the symbols already loaded (no library search, no subprocess)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return function


_FALLOCATE = _libc_fallocate()


def reserve_tail(fd: int, size: int = STDERR_RESERVE) -> bool:
    """Allocate `size` bytes for an empty file's first writes without changing its size (Linux
    fallocate with FALLOC_FL_KEEP_SIZE): what is written there later needs no new space. Best effort."""
    if _FALLOCATE is None:
        return False
    return _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, 0, size) == 0


# --- logging ------------------------------------------------------------------------------------------
class QuietFileHandler(logging.FileHandler):
    """A log file a full disk (or any other write failure) cannot turn into an exception or a traceback:
    records that cannot be written are counted in `failures` and dropped."""

    def __init__(self, filename: Path, encoding: str = "utf-8") -> None:
        super().__init__(filename, encoding=encoding)
        self.failures = 0

    def _open(self) -> Any:
        """The log file, never through a link planted under its name (a resumed job's work dir may hold
        what its payload left), and never a FIFO that could block the pilot."""
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o644)
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "a FIFO, not a log file", self.baseFilename)
        os.set_blocking(fd, True)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failures += 1

    def flush(self) -> None:
        try:
            super().flush()
        except (OSError, ValueError):
            self.failures += 1

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError):
            self.failures += 1
            stream = getattr(self, "stream", None)
            if stream is not None:
                try:
                    os.close(stream.fileno())  # the data cannot be written; the descriptor must not leak
                except (OSError, ValueError):
                    pass
