"""The SIGKILL matrix, shared by the embedded dispatcher's run (tests/e2e) and the real panda-server's in both
dialects (tests/integration).

One job: an input and two outputs of tens of MB (so that a copy can be caught in flight). A first pilot
(tests/gated_pilot.py) runs it and is stopped at one of eight points, then killed with SIGKILL (its PID
only). A second pilot runs `recover` on the same work area. For every point: the job ends at the
dispatcher in the right final state, with exactly one final report; every output is in storage exactly
once with the right checksum and is listed in the report; no partial file is left; no payload process
survives.

How each point is reached without timing luck: the payload itself writes its PIDs to a file the test
waits for (the payload point); every other point is a gate of the test launcher (see tests/gated_pilot.py)
that the pilot reaches and reports by renaming a file, then waits in until it is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from sitemovers.base import is_partial
from tests.e2e.conftest import pids_alive, read_pids, wait_for
from tests.gated_pilot import FINAL_REQUESTS, GATES_ENV

REPO = Path(__file__).resolve().parents[1]
SIZE = 12 * 2**20  # input size; the outputs are 1x and 2x the input


@dataclass(frozen=True)
class Point:
    name: str
    gate: str  # the gate (with {out1}/{out2}/{log} for the names), or "payload"
    state: str  # the final state the dispatcher must end with
    code: int  # its pilot error code


POINTS = (
    Point("stage-in", "get-mid", "failed", 1153),
    Point("after-starting", "get-start", "failed", 1153),
    Point("payload", "payload", "failed", 1153),
    Point("payload-exited", "put-start-{out1}", "finished", 0),
    Point("one-output-out", "put-start-{out2}", "finished", 0),
    Point("mid-copy", "put-mid-{out2}", "finished", 0),
    Point("log-shipped", "before-final", "finished", 0),
    Point("report-in-flight", "final-in-flight", "finished", 0),
)
POINT_IDS = [p.name for p in POINTS]


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def payload_script(input_lfn: str, out1: str, out2: str, pids: Path, block: bool) -> str:
    script = f"cat {input_lfn} > {out1} && cat {input_lfn} {input_lfn} > {out2}"
    if block:  # the payload point: a child too, both PIDs to the test, then wait (the pilot is killed here)
        script += f" && {{ sleep 600 & echo $! > {pids}.tmp; echo $$ >> {pids}.tmp; mv {pids}.tmp {pids}; wait; }}"
    return script


@dataclass
class Cell:
    """One run of the matrix: the first pilot stopped at `point` and killed, then `recover`."""

    point: Point
    root: Path
    argv: list[str]  # the pilot's command line after the subcommand, the same for both pilots
    env: dict[str, str]
    out1: str
    out2: str
    log: str

    @property
    def gates(self) -> Path:
        return self.root / "gates"

    @property
    def pids(self) -> Path:
        return self.root / "payload.pids"

    def gate(self) -> str:
        return self.point.gate.format(out1=self.out1, out2=self.out2, log=self.log)

    def pilot(self, command: str) -> list[str]:
        return [sys.executable, "-m", "tests.gated_pilot", command, *self.argv]

    def run(self) -> tuple[str, list[int]]:
        """Both pilots; returns their logs and the payload's PIDs (payload point only)."""
        self.gates.mkdir(exist_ok=True)
        env = {**self.env, GATES_ENV: str(self.gates), "PYTHONPATH": str(REPO)}
        if self.point.gate != "payload":
            (self.gates / f"{self.gate()}.armed").touch()
        first_log = self.root / "pilot1.out"
        with open(first_log, "w") as out:
            first = subprocess.Popen(self.pilot("run"), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        pids: list[int] = []
        try:
            if self.point.gate == "payload":
                pids = read_pids(self.pids, 2, timeout=120)
            else:
                reached = self.gates / f"{self.gate()}.reached"
                wait_for(lambda: reached.exists() or first.poll() is not None, 120, f"gate {self.gate()}")
                assert reached.exists(), f"pilot ended before {self.gate()}:\n{first_log.read_text()[-3000:]}"
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        second = subprocess.run(self.pilot("recover"), capture_output=True, text=True, env=env, cwd=self.root,
                                timeout=300)
        logs = first_log.read_text() + second.stdout + second.stderr
        assert second.returncode == 0, logs[-4000:]
        assert "Traceback" not in logs, logs[-4000:]
        return logs, pids


def final_requests(cell: Cell) -> list[str]:
    """The final reports both pilots sent (counted by the test launcher before each one went out)."""
    try:
        return (cell.gates / FINAL_REQUESTS).read_text().splitlines()
    except FileNotFoundError:
        return []


def check_storage(directory: Path, expected: dict[str, bytes]) -> None:
    """Exactly the expected files (each once, right content), nothing partial, nothing else."""
    found = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            assert not is_partial(name), f"partial file {name} left in storage"
            found[name] = Path(root) / name
    assert set(found) == set(expected), f"storage holds {sorted(found)}, expected {sorted(expected)}"
    for name, content in expected.items():
        data = found[name].read_bytes()
        assert len(data) == len(content) and adler(data) == adler(content), f"{name}: wrong content"


def check_no_survivor(pids: list[int], logs: str) -> None:
    assert pids_alive(pids) == [], f"payload processes {pids} survived:\n{logs[-3000:]}"


def expected_outputs(point: Point, data: bytes, out1: str, out2: str) -> dict[str, bytes]:
    return {out1: data, out2: data + data} if point.state == "finished" else {}
