"""The one runner of command-line movers' tools (lsm-get, rfcp, xrdcp, ...).

- argv lists only: a name never goes through a shell. A setup script (the queue's copysetup) is sourced
  by `bash -c 'source "$1" ...; shift; exec "$@"'` with the script and the command as positional
  arguments, so neither is ever parsed as shell text.
- the command runs in its own process group; on timeout or cancel the whole group is killed (TERM, a
  short grace, KILL), and nothing else.
- a timeout scaled by the file size (`timeout_for`).
- stdout/stderr go to anonymous temporary files and only their tails are read (bounded).
- the exit code and stderr are mapped to a typed `Failure` by the family's `classify` (default:
  `classify_default`, which knows the usual errno texts).

A family calls `run([...], setup=self.settings.setup, timeout=timeout_for(size), cancel=cancel,
classify=...)` and gets a `Completed` or a `TransferError`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Optional

from sitemovers.base import Failure, TransferError

log = logging.getLogger(__name__)

SETUP_FAILED = 121  # exit code of the wrapper when the setup script itself failed
SETUP_MARK = "pilot-mover: setup script failed"
_WRAPPER = (f'source "$1" || {{ echo "{SETUP_MARK}: $1" >&2; exit {SETUP_FAILED}; }}; '
            'shift; exec "$@"')
TAIL = 8192  # bytes of stdout/stderr kept
GRACE = 3.0  # s between SIGTERM and SIGKILL of a timed-out or cancelled tool


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def timeout_for(fsize: Optional[int], base: float = 400.0, rate: float = 1 << 20, cap: float = 6 * 3600.0) -> float:
    """Per-file timeout: a fixed allowance plus the size at a slow but honest rate (1 MB/s), capped."""
    return min(cap, base + (fsize or 0) / rate)


def classify_default(returncode: int, stderr: str) -> Failure:
    text = stderr.lower()
    if "no such file" in text or "not found" in text and returncode != 127:
        return Failure.NOT_FOUND
    if "permission denied" in text or "operation not permitted" in text or "read-only file system" in text:
        return Failure.AUTH
    if "no space left" in text or "quota exceeded" in text:
        return Failure.NO_SPACE
    if "file exists" in text:
        return Failure.EXISTS
    if returncode in (126, 127):
        return Failure.UNSUPPORTED  # the tool is missing or not executable here: another mover may do
    return Failure.FAILED


def run(argv: list[str], *, setup: str = "", timeout: float = 600.0, cancel: Optional[threading.Event] = None,
        env: Optional[Mapping[str, str]] = None, classify: Callable[[int, str], Failure] = classify_default,
        ok: tuple[int, ...] = (0,), poll: float = 0.05) -> Completed:
    """Run `argv` (after sourcing `setup`), bounded in time; raise TransferError unless it exits in `ok`."""
    if not argv:
        raise ValueError("empty command")
    if cancel is not None and cancel.is_set():  # a tool that ends before the first look would not see it
        raise TransferError(Failure.CANCELLED, f"{argv[0]} not started: transfer interrupted")
    full = ["bash", "-c", _WRAPPER, "pilot-mover", setup, *argv] if setup else list(argv)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=dict(env) if env is not None else None, start_new_session=True,
                                    close_fds=True)
        except FileNotFoundError:
            raise TransferError(Failure.UNSUPPORTED, f"{argv[0]}: command not found") from None
        except OSError as exc:
            raise TransferError(Failure.FAILED, f"{argv[0]}: cannot start: {exc.strerror}") from None
        stopped = _wait(proc, started + timeout, cancel, poll)
        seconds = time.monotonic() - started
        stdout, stderr = _tail(out), _tail(err)
    if stopped == "timeout":
        raise TransferError(Failure.TIMEOUT, f"{argv[0]} timed out after {timeout:.0f} s (killed)")
    if stopped == "cancel":
        raise TransferError(Failure.CANCELLED, f"{argv[0]} interrupted (killed)")
    code = proc.returncode
    if setup and code == SETUP_FAILED and SETUP_MARK in stderr:
        raise TransferError(Failure.SETUP, f"setup script {setup} failed: {_last_line(stderr, SETUP_MARK)}")
    if code not in ok:
        failure = classify(code, stderr + "\n" + stdout)
        detail = _last_line(stderr) or _last_line(stdout) or "no message"
        raise TransferError(failure, f"{argv[0]} exited with {code}: {detail}")
    return Completed(list(argv), code, stdout, stderr, seconds)


def _wait(proc: subprocess.Popen, deadline: float, cancel: Optional[threading.Event], poll: float) -> str:
    """'' when the tool ended by itself, else why it was killed ('timeout', 'cancel'). The leader is
    reaped only after its group got SIGKILL: until then its pid (the group id) cannot be reused, so the
    signal reaches the tool's own processes and nothing else; stragglers it left behind go with it."""
    why = ""
    nap = 0.001  # short commands end within a few ms: start polling fast, back off to `poll`
    while not _exited(proc.pid):
        if cancel is not None and cancel.is_set():
            why = "cancel"
        elif time.monotonic() >= deadline:
            why = "timeout"
        if why:
            _signal_group(proc.pid, signal.SIGTERM)
            grace = time.monotonic() + GRACE
            while not _exited(proc.pid) and time.monotonic() < grace:
                time.sleep(poll)
            break
        time.sleep(max(0.001, min(nap, deadline - time.monotonic())))
        nap = min(poll, nap * 2)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    return why


def _exited(pid: int) -> bool:
    """The process has ended (it stays a zombie: not reaped)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(handle: IO[bytes]) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - TAIL))
    return handle.read(TAIL).decode("utf-8", "replace")


def _last_line(text: str, containing: str = "") -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and containing in line]
    return lines[-1][:300] if lines else ""
