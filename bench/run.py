"""Pilot overhead figures on the embedded local dispatcher. Prints figures; never passes or fails.

  (a) pilot start to its first job request
  (b) per-job pilot overhead over 20 trivial jobs (wall time between final reports minus payload time)
  (c) the pilot's CPU seconds per minute while a payload sleeps
  (d) the pilot's peak RSS
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.dispatcher.local import LocalDispatcher  # noqa: E402
from pilot.sitebuilder import Site  # noqa: E402


def make_site(root: Path, jobs: dict[int, str]) -> tuple[Path, Path]:
    site = Site(root, queue="BENCH")
    for panda_id, script in jobs.items():
        site.add_job(panda_id, script)
    return site.jobs, site.write_queue()


def pilot_argv(root: Path, jobdir: Path, queue: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pilot", "--log-level", "DEBUG", "run", "--queue", "BENCH",
            "--dispatcher", str(jobdir), "--queue-config", str(queue), "--workdir", str(root / "work"),
            "--max-no-job", "1", "--no-job-wait", "0", *extra]


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def start_to_first_request(runs: int) -> list[float]:
    figures = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            jobdir, queue = make_site(root, {})
            begin = time.time()
            out = subprocess.run(pilot_argv(root, jobdir, queue), capture_output=True, text=True, cwd=ROOT)
            for line in out.stderr.splitlines():
                if "asking local for a job" in line:
                    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    figures.append(stamp - begin)
                    break
    return figures


def trivial_payload_seconds(runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", "true"], check=True)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def per_job_overhead(n: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobdir, queue = make_site(root, {1000 + i: "true" for i in range(n)})
        proc = subprocess.Popen(pilot_argv(root, jobdir, queue), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=ROOT)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, peak_rss_mb(proc.pid))
            time.sleep(0.01)
        dispatcher = LocalDispatcher(jobdir)
        finals = [dispatcher.history(1000 + i)[-1]["time"] for i in range(n)]
    payload = trivial_payload_seconds()
    gaps = [b - a - payload for a, b in zip(finals, finals[1:])]
    return gaps, peak


def idle_cpu(seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobdir, queue = make_site(root, {1: f"sleep {seconds + 5}"})
        proc = subprocess.Popen(pilot_argv(root, jobdir, queue), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=ROOT)
        dispatcher = LocalDispatcher(jobdir)
        deadline = time.time() + 30
        while time.time() < deadline and "running" not in [h["job_status"] for h in dispatcher.history(1)]:
            time.sleep(0.05)
        pilot = psutil.Process(proc.pid)
        time.sleep(1)  # let the payload's start settle
        before = sum(pilot.cpu_times()[:2])
        time.sleep(seconds)
        after = sum(pilot.cpu_times()[:2])
        peak = peak_rss_mb(proc.pid)
        proc.terminate()
        proc.wait(timeout=60)
    return (after - before) * 60 / seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=65.0)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()

    starts = start_to_first_request(args.starts)
    print(f"(a) start to first job request: median {statistics.median(starts):.3f} s, "
          f"max {max(starts):.3f} s over {len(starts)} starts   (goal <= 0.5 s)")
    gaps, peak_jobs = per_job_overhead(args.jobs)
    print(f"(b) per-job overhead, {args.jobs} trivial jobs: median {statistics.median(gaps):.3f} s, "
          f"max {max(gaps):.3f} s   (goal <= 0.2 s median)")
    cpu, peak_idle = idle_cpu(args.idle_seconds)
    print(f"(c) pilot CPU while the payload sleeps: {cpu:.3f} CPU s/min over {args.idle_seconds:.0f} s   "
          f"(goal <= 0.6 s/min)")
    print(f"(d) pilot peak RSS: {max(peak_jobs, peak_idle):.1f} MB   (goal <= 60 MB)")


if __name__ == "__main__":
    main()
