"""Small helpers shared by the loopback servers: free ports, waiting for a port, stopping by PID."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, alive, what: str, timeout: float = 60.0) -> None:
    """Wait until 127.0.0.1:port accepts a connection; fail early when `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f} s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0): reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def stop_pid(pid: int, grace: float = 10.0, first: int = signal.SIGTERM, group: bool = False) -> None:
    """Signal the process we started (`first`, SIGTERM by default) and SIGKILL it if it is still there after
    `grace` seconds. With `group`, its process group gets a SIGKILL in the end as well: it was started as the
    leader of a session of its own, so the group holds its own processes (a worker it could not stop) only."""
    if _signal(pid, first) and not _gone(pid, grace):
        _signal(pid, signal.SIGKILL)
        _gone(pid, 5.0)
    if group:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _gone(pid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
