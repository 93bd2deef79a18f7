"""Claim cost of the embedded dispatcher against the number of waiting jobs. Prints figures.

  per claim, with 2,000 / 10,000 / 50,000 job files waiting: the first claim (which lists the directory)
  and the mean / median / worst of the next 500; and, for comparison, the claim as it was before (list and
  sort every waiting file at every claim)
  8 pilots (processes) draining one directory: every job claimed exactly once, and the wall time per job

  python bench/claims.py [--sizes 2000,10000,50000] [--claims 500] [--pilots 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.dispatcher.base import JobRequest  # noqa: E402
from pilot.dispatcher.local import LocalDispatcher  # noqa: E402

REQUEST = JobRequest(site_name="BENCH", node="bench")


def fill(jobdir: Path, count: int) -> None:
    LocalDispatcher(jobdir)
    for panda_id in range(1, count + 1):
        job = {"PandaID": str(panda_id), "transformation": "/bin/true", "jobPars": "", "attemptNr": "1"}
        (jobdir / f"{panda_id}.json").write_text(json.dumps(job))


def claim_times(jobdir: Path, claims: int) -> tuple[float, list[float]]:
    dispatcher = LocalDispatcher(jobdir)
    times = []
    for _ in range(claims + 1):
        begin = time.perf_counter()
        job = dispatcher.get_job(REQUEST)
        times.append(time.perf_counter() - begin)
        assert job is not None
    return times[0], times[1:]


def old_claim(jobdir: Path) -> None:
    """The claim before this change: list and sort all waiting files, rename the first, read it."""
    for path in sorted(jobdir.glob("*.json"), key=lambda p: (len(p.name), p.name)):
        claimed = jobdir / "claimed" / path.name
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            continue
        json.loads(claimed.read_text())
        return


def old_claim_times(jobdir: Path, claims: int) -> list[float]:
    times = []
    for _ in range(claims):
        begin = time.perf_counter()
        old_claim(jobdir)
        times.append(time.perf_counter() - begin)
    return times


def _drain(jobdir: Path) -> list[int]:
    dispatcher = LocalDispatcher(jobdir)
    got = []
    while (job := dispatcher.get_job(REQUEST)) is not None:
        got.append(int(job["PandaID"]))
    return got


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,10000,50000")
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--old-claims", type=int, default=50)
    parser.add_argument("--pilots", type=int, default=8)
    parser.add_argument("--shared", type=int, default=10000, help="jobs drained by the pilots together")
    args = parser.parse_args()
    print("claim cost (ms) against waiting job files; 'first' lists the directory")
    print(f"{'waiting':>8} {'first':>7} {'mean':>7} {'median':>7} {'worst':>7} | {'before: mean':>12}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
            jobdir = Path(tmp) / "jobs"
            fill(jobdir, size)
            first, rest = claim_times(jobdir, args.claims)
            before = old_claim_times(jobdir, args.old_claims)
            print(f"{size:>8} {ms(first)} {ms(statistics.mean(rest))} {ms(statistics.median(rest))} "
                  f"{ms(max(rest))} | {ms(statistics.mean(before)):>12}")
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
        jobdir = Path(tmp) / "jobs"
        fill(jobdir, args.shared)
        begin = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(args.pilots) as pool:
            claimed = pool.map(_drain, [jobdir] * args.pilots)
        elapsed = time.perf_counter() - begin
        everything = sorted(p for one in claimed for p in one)
        once = everything == list(range(1, args.shared + 1))
        print(f"{args.pilots} pilots (processes, on {os.cpu_count()} cores) drained {args.shared} jobs in "
              f"{elapsed:.2f} s, start-up included ({elapsed / args.shared * 1000:.2f} ms of wall time per job); "
              f"each job claimed exactly once: {once} (claims per pilot: {sorted(len(c) for c in claimed)})")


if __name__ == "__main__":
    main()
