"""The journal with a large job definition: its size on disk and the time of one save, per step.
Prints figures.

  before: the definition inside journal.json, rewritten (and fsynced) at every step, as it was
  after:  the definition written once to jobdef.json, journal.json naming it

  python bench/journal.py [--mb 100]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.fsutil import atomic_write_json  # noqa: E402
from pilot.journal import STEPS, Journal  # noqa: E402
from pilot.layout import JOB_DEFINITION, JOURNAL  # noqa: E402


def definition(mb: int) -> dict[str, str]:
    return {"PandaID": "1", "attemptNr": "1", "transformation": "/bin/true",
            "jobPars": "--arg " + "x" * (mb * 2**20), "inFiles": "NULL", "outFiles": "1.log.tgz"}


def before(workdir: Path, job: dict[str, str]) -> tuple[list[float], int]:
    """Every step wrote the whole journal, definition included (a deep copy, then JSON, then fsync)."""
    times = []
    data = {"panda_id": 1, "attempt_nr": 1, "site": "BENCH", "node": "bench", "job": job, "step": "",
            "state": "", "steps": {}, "files": {}, "final": None, "recovery_attempts": 0, "version": 1}
    for step in STEPS:
        begin = time.perf_counter()
        data["step"] = step
        data["steps"][step] = time.time()
        atomic_write_json(workdir / JOURNAL, copy.deepcopy(data))
        times.append(time.perf_counter() - begin)
    return times, (workdir / JOURNAL).stat().st_size


def after(workdir: Path, job: dict[str, str]) -> tuple[list[float], int, int]:
    times = []
    begin = time.perf_counter()
    journal = Journal.create(workdir, 1, 1, "BENCH", "bench", job)  # writes the definition once
    times.append(time.perf_counter() - begin)
    for step in STEPS[1:]:
        begin = time.perf_counter()
        journal.reach(step)
        times.append(time.perf_counter() - begin)
    return times, (workdir / JOURNAL).stat().st_size, (workdir / JOB_DEFINITION).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100, help="size of the job definition (its jobPars), MB")
    args = parser.parse_args()
    job = definition(args.mb)
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        old_dir, new_dir = Path(tmp) / "before", Path(tmp) / "after"
        old_dir.mkdir()
        new_dir.mkdir()
        old_times, old_size = before(old_dir, job)
        new_times, new_size, def_size = after(new_dir, job)
    print(f"journal with a {args.mb} MB job definition, {len(STEPS)} steps ({', '.join(STEPS)})")
    print(f"{'':8} {'journal.json':>14} {'jobdef.json':>12} {'first save':>11} {'later saves':>12} {'all steps':>10}")
    print(f"{'before':8} {old_size / 2**20:11.1f} MB {'-':>12} {old_times[0]:9.3f} s "
          f"{statistics.mean(old_times[1:]):10.3f} s {sum(old_times):8.2f} s")
    print(f"{'after':8} {new_size / 1024:11.1f} kB {def_size / 2**20:9.1f} MB {new_times[0]:9.3f} s "
          f"{statistics.mean(new_times[1:]):10.4f} s {sum(new_times):8.2f} s")


if __name__ == "__main__":
    main()
