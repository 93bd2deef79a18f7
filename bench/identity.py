"""Payload isolation figures. Prints figures; never passes or fails.

  (a) added wall time per job of each launcher (none, uid, glexec stand-in, bubblewrap sandbox) for the
      same trivial payload: whole jobs run in-process on the embedded dispatcher, median per job, minus
      the `none` median
  (b) time to end a payload tree of 500 processes by its cgroup (cgroup.kill) and by the fallback
      (child-subreaper walks of /proc: every process stopped, then all killed through pidfds and reaped in
      bulk), from the kill request to the last process collected

Switched modes need root: a temporary account is made for them (and removed). Run as
`python bench/identity.py [--jobs N]`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.config import PilotConfig, QueueConfig  # noqa: E402
from pilot.control import Control  # noqa: E402
from pilot.dispatcher.local import LocalDispatcher  # noqa: E402
from pilot.job import parse_job  # noqa: E402
from pilot.jobrun import JobRun, PilotContext  # noqa: E402
from pilot.node import NodeInfo  # noqa: E402
from pilot.payload import Payload  # noqa: E402
from pilot.proctrack import CgroupTracker, SubreaperTracker, become_subreaper, new_tracker  # noqa: E402
from sitemovers.registry import Registry  # noqa: E402

ACCOUNT = f"ppb{os.getpid()}"  # a temporary account of this run
DN = "/DC=org/DC=pandapilot-bench/CN=Bench User"
STANDIN = ROOT / "tests" / "standins" / "glexec"


def user_proxy() -> str:
    """A self-signed certificate + key for DN, as a user's proxy (openssl)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", f"{tmp}/k", "-out", f"{tmp}/c", "-days", "1",
                        "-subj", DN + "/CN=314159"], check=True, capture_output=True)
        return Path(f"{tmp}/c").read_text() + Path(f"{tmp}/k").read_text()


def queue_for(mode: str, root: Path) -> Optional[QueueConfig]:
    mapfile = root / "grid-mapfile"
    mapfile.write_text(f'"{DN}" {ACCOUNT}\n')
    base = {"se": str(root / "se"), "kill_grace": 2}
    if mode == "none":
        return QueueConfig.from_mapping("BENCH", base)
    if os.geteuid() != 0:
        return None
    if mode == "uid":
        return QueueConfig.from_mapping("BENCH", {**base, "identity": "uid", "grid_mapfile": str(mapfile)})
    if mode == "sandbox":
        if shutil.which("bwrap") is None:
            return None
        return QueueConfig.from_mapping("BENCH", {**base, "identity": "uid", "grid_mapfile": str(mapfile),
                                                  "sandbox": "bubblewrap"})
    if mode == "glexec":
        (root / "glexec" / "sbin").mkdir(parents=True, exist_ok=True)
        (root / "glexec" / "etc").mkdir(exist_ok=True)
        shutil.copy2(STANDIN, root / "glexec" / "sbin" / "glexec")
        shutil.copy2(mapfile, root / "glexec" / "etc" / "grid-mapfile")
        return QueueConfig.from_mapping("BENCH", {**base, "identity": "glexec",
                                                  "glexec_path": str(root / "glexec" / "sbin" / "glexec")})
    raise ValueError(mode)


def job_walls(mode: str, jobs: int, proxy: str) -> Optional[list[float]]:
    root = Path(tempfile.mkdtemp(prefix=f"pandapilot-bench-{mode}-"))
    os.chmod(root, 0o755)
    try:
        queue = queue_for(mode, root)
        if queue is None:
            return None
        (root / "se").mkdir()
        local = LocalDispatcher(root / "jobs")
        ctx = PilotContext(config=PilotConfig(queue="BENCH", dispatcher=str(root / "jobs"), workdir=root / "work"),
                           queue=queue, node=NodeInfo(host="bench", cores=1, memory_mb=1000, disk_free_mb=1000,
                                                      cpu_mhz=0),
                           dispatcher=local, registry=Registry(), control=Control())
        walls = []
        for n in range(jobs):
            raw = {"PandaID": str(n + 1), "attemptNr": "1", "transformation": "/bin/true", "jobPars": "",
                   "outFiles": f"{n + 1}.log.tgz", "logFile": f"{n + 1}.log.tgz", "prodSourceLabel": "user",
                   "prodUserID": DN, "userProxy": proxy}
            begin = time.perf_counter()
            result = JobRun(parse_job(raw), ctx, root / "work" / f"job{n}").run()
            walls.append(time.perf_counter() - begin)
            if result.state != "finished":
                print(f"  {mode}: job failed: {result.error_code} {result.diag}")
                return None
        return walls
    finally:
        shutil.rmtree(root, ignore_errors=True)


TREE = "for i in $(seq 500); do sleep 300 & done; wait"


def end_tree(use_cgroup: bool, workdir: Path) -> Optional[float]:
    tracker = new_tracker("bench") if use_cgroup else SubreaperTracker()
    if use_cgroup and not isinstance(tracker, CgroupTracker):
        return None
    payload = Payload(["bash", "-c", TREE], workdir, {"PATH": os.environ["PATH"]}, tracker)
    payload.start(threading.Event())
    deadline = time.monotonic() + 120
    while len(tracker.pids()) < 501 and time.monotonic() < deadline:
        time.sleep(0.05)
    count = len(tracker.pids())
    begin = time.perf_counter()
    payload.kill(grace=0)
    took = time.perf_counter() - begin
    for name in ("payload.stdout", "payload.stderr"):
        os.unlink(workdir / name)
    left = len(tracker.pids())
    if count < 501 or left:
        print(f"  tree of {count} processes, {left} left after the kill")
    return took


def with_account(action):
    if os.geteuid() != 0:
        return action()
    subprocess.run(["userdel", ACCOUNT], capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", f"/home/{ACCOUNT}", "--user-group", ACCOUNT],
                   check=True, capture_output=True)
    try:
        return action()
    finally:
        subprocess.run(["pkill", "-KILL", "-u", ACCOUNT], capture_output=True)
        subprocess.run(["userdel", ACCOUNT], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs per launcher (default 10)")
    parser.add_argument("--trees", type=int, default=3, help="500-process trees ended per way (default 3)")
    args = parser.parse_args()
    become_subreaper()
    print(f"payload isolation figures, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")

    def launchers() -> None:
        proxy = user_proxy()
        print(f"(a) wall time per job ({args.jobs} trivial jobs each, /bin/true, in-process JobRun), median:")
        base = None
        for mode in ("none", "uid", "glexec", "sandbox"):
            walls = job_walls(mode, args.jobs, proxy)
            if walls is None:
                print(f"  {mode:8s} not measured (needs root; bwrap for the sandbox)")
                continue
            median = statistics.median(walls)
            base = median if mode == "none" else base
            added = f"{(median - base) * 1000:+7.0f} ms" if base is not None and mode != "none" else "   (baseline)"
            print(f"  {mode:8s} {median * 1000:7.0f} ms per job  {added}   (min {min(walls) * 1000:.0f} ms)")

    with_account(launchers)
    print(f"(b) ending a payload tree of 500 processes (+ its shell), kill request to last process collected, "
          f"{args.trees} trees each:")
    with tempfile.TemporaryDirectory() as tmp:
        for label, use_cgroup in (("cgroup.kill", True), ("subreaper stop + SIGKILL", False)):
            times = [end_tree(use_cgroup, Path(tmp)) for _ in range(args.trees)]
            if any(t is None for t in times):
                print(f"  {label:26s} not measured (no writable cgroup v2 hierarchy)")
                continue
            print(f"  {label:26s} median {statistics.median(times) * 1000:7.0f} ms  "
                  f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")


if __name__ == "__main__":
    main()
