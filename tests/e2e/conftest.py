"""A throw-away local site for end-to-end runs of the pilot's command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import psutil
import pytest

from pilot.dispatcher.local import LocalDispatcher
from pilot.fsutil import atomic_write_json

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


@dataclass
class Site:
    root: Path
    queue_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.jobs = self.root / "jobs"
        self.se = self.root / "se"
        self.work = self.root / "work"
        self.se.mkdir()
        LocalDispatcher(self.jobs)  # lays out the job directory (claimed/, history/, commands/ ...)
        self.queue_settings = {"se": str(self.se), "seprodpath": "out", "transfer_retry_wait": 0.1,
                               "kill_grace": 3, **self.queue_settings}

    @property
    def dispatcher(self) -> LocalDispatcher:
        return LocalDispatcher(self.jobs)

    def put_input(self, name: str, data: bytes, scope: str = "scope") -> dict[str, str]:
        (self.se / scope).mkdir(exist_ok=True)
        (self.se / scope / name).write_bytes(data)
        return {"lfn": name, "fsize": str(len(data)), "checksum": f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}",
                "scope": scope}

    def add_job(self, panda_id: int, script: str = "true", inputs: tuple[dict[str, str], ...] = (),
                outputs: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
        log = f"{panda_id}.log.tgz"
        outs = [*outputs, log]
        job = {
            "PandaID": str(panda_id), "attemptNr": "1", "transformation": "/bin/sh",
            "jobPars": f"-c {json.dumps(script)}", "prodSourceLabel": "managed",
            "inFiles": ",".join(f["lfn"] for f in inputs) or "NULL",
            "fsize": ",".join(f["fsize"] for f in inputs) or "NULL",
            "checksum": ",".join(f["checksum"] for f in inputs) or "NULL",
            "scopeIn": ",".join(f["scope"] for f in inputs) or "NULL",
            "GUID": ",".join(f"g-{panda_id}-{i}" for i in range(len(inputs))) or "NULL",
            "outFiles": ",".join(outs), "scopeOut": ",".join("scope" for _ in outs),
            "logFile": log, "logGUID": f"log-{panda_id}",
        }
        job.update({k: str(v) for k, v in extra.items()})
        atomic_write_json(self.jobs / f"{panda_id}.json", job)
        return job

    def add_raw(self, name: str, text: str) -> None:
        (self.jobs / name).write_text(text)

    def write_queue(self) -> Path:
        path = self.root / "queue.yaml"
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in self.queue_settings.items()))
        return path

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "pilot", "run", "--queue", QUEUE, "--dispatcher", str(self.jobs),
                "--queue-config", str(self.write_queue()), "--workdir", str(self.work),
                "--max-no-job", "1", "--no-job-wait", "0.05", "--max-failures", "0", *extra]

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=self.root)

    def run(self, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*extra), capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def history(self, panda_id: int) -> list[dict[str, Any]]:
        return self.dispatcher.history(panda_id)

    def states(self, panda_id: int) -> list[str]:
        return [h["job_status"] for h in self.history(panda_id)]

    def final(self, panda_id: int) -> dict[str, Any]:
        history = self.history(panda_id)
        assert history, f"job {panda_id} was never reported"
        assert history[-1]["job_status"] in ("finished", "failed"), history[-1]
        return history[-1]

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
