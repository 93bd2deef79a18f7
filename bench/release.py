"""The release environment's cost per job. Prints figures; never passes or fails.

  (a) the release check: finding a job's release among many installed ones (150 releases)
  (b) the wrapper: writing it, and running a payload through it (sourcing a trivial setup) against
      running the same payload bare
  (c) end to end: wall time per job of the pilot over N trivial jobs in a release against N bare ones
      (time between two jobs' final reports)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import pilot_argv  # noqa: E402
from pilot.config import QueueConfig  # noqa: E402
from pilot.dispatcher.local import LocalDispatcher  # noqa: E402
from pilot.job import parse_job  # noqa: E402
from pilot.layout import JobDir  # noqa: E402
from pilot.release import find_release, wrap, write_wrapper  # noqa: E402

PLATFORMS = ("x86_64-el9-gcc13-opt", "x86_64-el8-gcc11-opt", "aarch64-el9-gcc13-opt")


def release_tree(root: Path, per_platform: int = 50) -> Path:
    for platform in PLATFORMS:
        for n in range(per_platform):
            where = root / platform / f"21.0.{n}"
            where.mkdir(parents=True)
            (where / "setup.sh").write_text(f'export RELEASE_MARK={n}\nexport PATH="{where}:$PATH"\n')
    return root


def median_ms(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        action()
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1000


def micro(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        queue = QueueConfig(appdir=str(release_tree(root / "sw")))
        job = parse_job({"PandaID": "1", "transformation": "true", "swRelease": "Atlas-21.0.42",
                         "cmtConfig": PLATFORMS[0]})
        check = median_ms(lambda: find_release(job, queue), runs)
        print(f"(a) release check among {len(PLATFORMS) * 50} releases: median {check:.3f} ms")
        dirs = JobDir(root / "job")
        dirs.payload.mkdir(parents=True)
        work = dirs.payload

        def write() -> None:
            write_wrapper(dirs, 1, queue)

        writing = median_ms(write, runs)
        release = find_release(job, queue)
        assert release is not None
        env = {"PATH": "/usr/bin:/bin", "PANDA_ENVSETUP": release.setup, "PANDA_SWRELEASE": job.sw_release,
               "PANDA_CMTCONFIG": release.platform, "PANDA_HOMEPACKAGE": ""}
        wrapped = wrap(["/bin/true"], dirs.release_wrapper)
        bare = median_ms(lambda: subprocess.run(["/bin/true"], env=env, cwd=work, check=True), runs)
        through = median_ms(lambda: subprocess.run(wrapped, env=env, cwd=work, check=True), runs)
        print(f"(b) wrapper: written in {writing:.3f} ms; payload through it {through:.2f} ms vs bare {bare:.2f} ms: "
              f"+{through - bare + writing + check:.2f} ms per job (check + write + run)")


def end_to_end(jobs: int, rounds: int) -> None:
    gaps: dict[str, list[float]] = {"bare": [], "release": []}
    for kind in ("bare", "release") * rounds:  # interleaved: a load change hits both kinds alike
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            jobdir, se = root / "jobs", root / "se"
            se.mkdir()
            LocalDispatcher(jobdir)
            sw = release_tree(root / "sw", per_platform=10)
            for i in range(jobs):
                job = {"PandaID": str(1000 + i), "attemptNr": "1", "transformation": "/bin/sh", "jobPars": "-c true",
                       "outFiles": f"{1000 + i}.log.tgz", "logFile": f"{1000 + i}.log.tgz"}
                if kind == "release":
                    job.update(swRelease="Atlas-21.0.7", cmtConfig=PLATFORMS[0], homepackage="AtlasProduction/21.0.7")
                (jobdir / f"{1000 + i}.json").write_text(json.dumps(job))
            queue = root / "queue.yaml"
            queue.write_text(f"se: {se}\n" + (f"appdir: {sw}\n" if kind == "release" else ""))
            subprocess.run(pilot_argv(root, jobdir, queue), capture_output=True, cwd=ROOT, check=False)
            dispatcher = LocalDispatcher(jobdir)
            finals = [dispatcher.history(1000 + i)[-1] for i in range(jobs)]
            assert all(f["job_status"] == "finished" for f in finals), [f.get("pilot_error_diag") for f in finals]
            times = [f["time"] for f in finals]
            gaps[kind].extend(b - a for a, b in zip(times, times[1:]))
    bare, release = statistics.median(gaps["bare"]) * 1000, statistics.median(gaps["release"]) * 1000
    print(f"(c) per job (median of {len(gaps['bare'])} gaps each, {rounds} interleaved rounds of {jobs} trivial "
          f"jobs): bare {bare:.0f} ms, in a release {release:.0f} ms: {release - bare:+.0f} ms per job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="repetitions of each micro measurement")
    parser.add_argument("--jobs", type=int, default=20, help="jobs per end-to-end run")
    parser.add_argument("--rounds", type=int, default=3, help="end-to-end runs of each kind")
    args = parser.parse_args()
    micro(args.runs)
    end_to_end(args.jobs, args.rounds)


if __name__ == "__main__":
    main()
