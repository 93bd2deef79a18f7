"""A throw-away local site for end-to-end runs of the pilot's command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import psutil
import pytest

from pilot import sitebuilder

QUEUE = "E2E_SITE"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


class Site(sitebuilder.Site):
    """The shared site builder (pilot/sitebuilder.py) with the pilot's command line run as a subprocess."""

    def __init__(self, root: Path, queue_settings: Optional[dict[str, Any]] = None) -> None:
        super().__init__(root, queue_settings or {}, queue=QUEUE)

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "pilot", "run", *self.run_options(*extra)]

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=self.root)

    def run(self, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*extra), capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def wait_state(self, panda_id: int, state: str, timeout: float = 30) -> None:
        wait_for(lambda: state in self.states(panda_id), timeout, f"job {panda_id} to report {state}")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield Site(tmp_path)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Pilots started by a test; any still running at the end are stopped (by their own PID)."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        stop_pilot(proc)
        if proc.stdout:
            proc.stdout.close()


def stop_pilot(proc: subprocess.Popen) -> None:
    """A pilot a test left running: SIGTERM first, so that it kills its payload, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def read_pids(path: Path, count: int, timeout: float = 20) -> list[int]:
    def ready() -> Optional[list[int]]:
        try:
            pids = [int(x) for x in path.read_text().split()]
        except (FileNotFoundError, ValueError):
            return None
        return pids if len(pids) >= count else None

    return wait_for(ready, timeout, f"{count} pids in {path}")


__all__ = ["Site", "wait_for", "pids_alive", "read_pids", "stop_pilot", "os"]
