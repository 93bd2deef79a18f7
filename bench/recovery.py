"""Job recovery figures. Prints figures; never passes or fails.

  (a) the scan of 1,000 leftover work dirs, most of them not eligible (a live owner, another site, a job
      already reported), as a pilot does it before its first job (goal: <= 1 s)
  (b) pilot start to the recovered job's final report, for a job with 10 outputs (local storage) whose
      pilot died after the payload ended (`pandapilot recover`, a fresh process)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.config import PilotConfig, QueueConfig  # noqa: E402
from pilot.control import Control  # noqa: E402
from pilot.dispatcher.local import LocalDispatcher  # noqa: E402
from pilot.jobrun import PilotContext  # noqa: E402
from pilot.journal import Journal  # noqa: E402
from pilot.layout import JobDir, job_dir_name  # noqa: E402
from pilot.node import NodeInfo  # noqa: E402
from recovery.jobrecovery import JobRecovery  # noqa: E402
from sitemovers.registry import Registry  # noqa: E402

QUEUE = "BENCH"
DEAD = {"pid": 1, "start_time": 1.0, "boot_id": "another-boot", "node": ""}  # this node, another boot


def definition(panda_id: int, outputs: int) -> dict[str, str]:
    outs = [f"out{n}.dat" for n in range(outputs)]
    return {"PandaID": str(panda_id), "attemptNr": "1", "transformation": "/bin/sh", "jobPars": "-c true",
            "outFiles": ",".join([*outs, f"{panda_id}.log.tgz"]), "logFile": f"{panda_id}.log.tgz"}


def leftover(work: Path, panda_id: int, site: str, owner: dict, step: str, outputs: int = 1) -> Path:
    workdir = work / job_dir_name(panda_id, 1)
    JobDir(workdir).payload.mkdir(parents=True)
    journal = Journal.create(workdir, panda_id, 1, site, "node", definition(panda_id, outputs), owner=owner)
    journal.reach("staged_in")
    journal.reach("payload_done", exit_code=0, error_code=0, diag="")
    if step == "reported":
        journal.settled("finished")
    return workdir


def context(root: Path) -> PilotContext:
    return PilotContext(
        config=PilotConfig(queue=QUEUE, dispatcher=str(root / "jobs"), workdir=root / "work"),
        queue=QueueConfig(name=QUEUE, se=str(root / "se")),
        node=NodeInfo(host="node", cores=1, memory_mb=1000, disk_free_mb=1000, cpu_mhz=0),
        dispatcher=LocalDispatcher(root / "jobs"), registry=Registry(), control=Control(),
    )


def scan(root: Path, count: int = 1000, eligible: int = 10) -> tuple[float, int]:
    work = root / "work"
    me = JobRecovery(context(root), []).me
    for n in range(count):
        if n < eligible:
            leftover(work, n, QUEUE, DEAD, "payload_done")
        elif n % 3 == 0:
            leftover(work, n, "ELSEWHERE", DEAD, "payload_done")
        elif n % 3 == 1:
            leftover(work, n, QUEUE, DEAD, "reported")
        else:
            leftover(work, n, QUEUE, me, "payload_done")  # this process: alive
    recovery = JobRecovery(context(root), [work])
    begin = time.perf_counter()
    found = 0
    for workdir in recovery.job_dirs():
        if recovery.eligible(workdir) is not None:
            found += 1
    return time.perf_counter() - begin, found


def recover_time(root: Path, outputs: int = 10, size: int = 2**20) -> float:
    """A job of `outputs` outputs left after its payload; wall time from `pandapilot recover` starting to
    the final report in the dispatcher's history."""
    jobs, se, work = root / "jobs", root / "se", root / "work"
    se.mkdir(parents=True)
    LocalDispatcher(jobs)
    workdir = leftover(work, 1, QUEUE, DEAD, "payload_done", outputs)
    for n in range(outputs):
        (JobDir(workdir).payload / f"out{n}.dat").write_bytes(os.urandom(size))
    queue = root / "queue.yaml"
    queue.write_text(f"se: {se}\n")
    argv = [sys.executable, "-m", "pilot", "recover", "--queue", QUEUE, "--dispatcher", str(jobs),
            "--queue-config", str(queue), "--workdir", str(work)]
    begin = time.time()
    subprocess.run(argv, check=True, capture_output=True, cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)})
    final = [h for h in LocalDispatcher(jobs).history(1) if h["job_status"] == "finished"]
    assert len(final) == 1 and len(final[0]["job_output_report"]) == outputs + 1, final
    return final[0]["time"] - begin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scans, times = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, found = scan(Path(tmp))
            scans.append(seconds)
        with tempfile.TemporaryDirectory() as tmp:
            times.append(recover_time(Path(tmp)))
    print(json.dumps({"runs": args.runs, "scan_1000_dirs_s": {"median": round(statistics.median(scans), 3),
                                                              "max": round(max(scans), 3), "eligible": found},
                      "recover_10_outputs_s": {"median": round(statistics.median(times), 3),
                                               "max": round(max(times), 3)}}, indent=1))
    print(f"(a) scan of 1,000 leftover work dirs ({found} eligible): median {statistics.median(scans):.3f} s "
          f"(goal <= 1 s)")
    print(f"(b) pilot start to the recovered job's final report, 10 outputs of 1 MiB: "
          f"median {statistics.median(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
