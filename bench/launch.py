"""Launch figures: prints them, never passes or fails.

  (a) the bundle's size
  (b) cold start to the first job request: the bundle (first run, unpacking psutil, and later runs) against
      the installed package
  (c) jobs per minute for trivial jobs with N = 1, 2, 4 pilots submitted through the wrapper to a single-node
      Slurm (root; .ci/provision-slurm.sh)
  (d) Harvester push-mode turnaround: from the job's fetch by Harvester to its final state on the server, with
      truePilot true and false (root; .ci/provision-panda-server.sh, provision-slurm.sh, provision-harvester.sh)
  (e) the selftest battery's wall time with the bundle

`python bench/launch.py [--skip slurm,harvester]`
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launch.build import build  # noqa: E402
from pilot.sitebuilder import Site  # noqa: E402

WRAPPER = ROOT / "launch" / "pilot-wrapper.sh"
NODE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def first_request_seconds(argv: list[str], env: dict[str, str], root: Path) -> float:
    site = Site(root, queue="BENCH")
    begin = time.time()
    out = subprocess.run([*argv, "--log-level", "DEBUG", "run", *site.run_options("--max-no-job", "1")],
                         capture_output=True, text=True, env=env, cwd=root)
    for line in out.stderr.splitlines():
        if "for a job" in line and "asking" in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - begin
    raise RuntimeError(f"no job request in the pilot's log:\n{out.stderr[-2000:]}")


def cold_start(bundle: Path, runs: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"bundle, first run (psutil unpacked)": [], "bundle, later runs": [],
                                       "installed package": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            cache = Path(tmp) / f"cache-{i}"
            env = {**os.environ, "PANDAPILOT_NATIVE_CACHE": str(cache)}
            isolated = [sys.executable, "-S", str(bundle)]  # no site-packages: the bundled psutil is used
            figures["bundle, first run (psutil unpacked)"].append(
                first_request_seconds(isolated, env, Path(tmp) / f"a{i}"))
            figures["bundle, later runs"].append(first_request_seconds(isolated, env, Path(tmp) / f"b{i}"))
            figures["installed package"].append(
                first_request_seconds([sys.executable, "-m", "pilot"], dict(os.environ), Path(tmp) / f"c{i}"))
    return figures


def slurm_throughput(bundle: Path, pilots: list[int], jobs: int) -> dict[int, float]:
    from tests.integration.slurm import SlurmCluster

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = SlurmCluster(Path(tmp) / "slurm")
        cluster.root.mkdir()
        cluster.start()
        try:
            for n in pilots:
                site = Site(Path(tmp) / f"site-{n}", queue="BENCH")
                for panda_id in range(1, jobs + 1):
                    site.add_job(panda_id, "true")
                argv = [str(WRAPPER), "--bundle", str(bundle), "--python", NODE_PYTHON, "--workdir-base",
                        str(site.root), "--", *site.run_options()]
                begin = time.time()
                ids = [cluster.sbatch(argv, site.root, env={"PANDAPILOT_NATIVE_CACHE": str(Path(tmp) / "native")})
                       for _ in range(n)]
                while not all(site.final_or_none(p) for p in range(1, jobs + 1)):
                    time.sleep(0.05)
                last = max(site.final_or_none(p)["time"] for p in range(1, jobs + 1))
                rates[n] = jobs / ((last - begin) / 60)
                cluster.wait_finished(ids, timeout=120)
        finally:
            cluster.stop()
    return rates


def harvester_turnaround(bundle: Path, jobs: int) -> dict[str, list[float]]:
    from tests.integration.harvester import HarvesterFactory, Queue
    from tests.integration.pandaserver import launch_panda_server
    from tests.integration.slurm import SlurmCluster

    figures: dict[str, list[float]] = {"truePilot true": [], "truePilot false": []}
    server = launch_panda_server("1.0.4")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = SlurmCluster(root / "slurm")
        cluster.root.mkdir()
        cluster.start()
        (root / "se").mkdir()
        queue_file = root / "queue.yaml"
        queue_file.write_text(f"se: {root / 'se'}\nseprodpath: prod\n")
        base = [str(WRAPPER), "--bundle", str(bundle), "--python", NODE_PYTHON, "--workdir-base", "{accessPoint}",
                "--", "--queue", "{computingSite}", "--queue-config", str(queue_file), "--max-no-job", "1",
                "--no-job-wait", "0", "--access-point", "{accessPoint}"]
        to_server = ["--dispatcher", server.url, "--cacert", str(server.ca_cert), "--cert", str(server.client_cert),
                     "--key", str(server.client_key)]
        queues = [Queue("BENCH_PUSH", "OneToOne", True, " ".join(base + to_server)),
                  Queue("BENCH_PUSH_FILES", "OneToOne", False, " ".join(base))]
        (root / "harvester").mkdir()
        factory = HarvesterFactory(root / "harvester", server, cluster, queues)
        factory.start()
        try:
            for label, site in (("truePilot true", "BENCH_PUSH"), ("truePilot false", "BENCH_PUSH_FILES")):
                ids = [server.insert_job(site=site, job_pars="-c true") for _ in range(jobs)]
                fetched: dict[int, float] = {}
                final: dict[int, float] = {}
                deadline = time.monotonic() + 600
                while len(final) < jobs and time.monotonic() < deadline:
                    for panda_id in ids:
                        state = server.job_state(panda_id)["jobstatus"]
                        if state != "activated":
                            fetched.setdefault(panda_id, time.time())
                        if state in ("holding", "finished", "failed"):
                            final.setdefault(panda_id, time.time())
                    time.sleep(0.25)
                figures[label] = [final[p] - fetched[p] for p in final]
        finally:
            factory.stop()
            cluster.stop()
            server.shutdown()
    return figures


def selftest_seconds(bundle: Path) -> str:
    """The whole battery with the bundle on a default queue: the tests' own times added up (the selftest's
    figure) and the command's wall time (with the site set-ups and the version query)."""
    begin = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pilot", "selftest", "--bundle", str(bundle), "--python",
                          NODE_PYTHON], capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - begin
    match = re.search(r"battery wall time: (.*)", out.stdout)
    tests = len(re.findall(r"^\S.* \[.*\]: (?:pass|FAIL|n/a): ", out.stdout, re.M))
    return (f"{match.group(1) if match else 'not measured'} over {tests} tests; the command {wall:.1f} s "
            f"(exit code {out.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=40, help="trivial jobs per Slurm run")
    parser.add_argument("--push-jobs", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: slurm, harvester")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build(Path(tmp) / "pandapilot.pyz").path
        print(f"(a) bundle size: {bundle.stat().st_size / 1e6:.2f} MB")
        for label, values in cold_start(bundle, args.starts).items():
            print(f"(b) start to first job request, {label}: median {statistics.median(values):.3f} s, "
                  f"max {max(values):.3f} s over {len(values)}")
        root = os.geteuid() == 0
        if "slurm" in skip or not root:
            print("(c) Slurm throughput: not measured (" + ("skipped" if "slurm" in skip else "needs root") + ")")
        else:
            for n, rate in slurm_throughput(bundle, [1, 2, 4], args.jobs).items():
                print(f"(c) {args.jobs} trivial jobs, {n} pilot(s) under Slurm: {rate:.0f} jobs/minute")
        if "harvester" in skip or not root:
            print("(d) Harvester push turnaround: not measured (" + ("skipped" if "harvester" in skip
                                                                    else "needs root") + ")")
        else:
            for label, values in harvester_turnaround(bundle, args.push_jobs).items():
                shown = f"median {statistics.median(values):.1f} s, max {max(values):.1f} s" if values else "no job"
                print(f"(d) Harvester push turnaround (fetched -> final on the server), {label}: {shown} "
                      f"over {len(values)} jobs")
        print(f"(e) selftest battery wall time: {selftest_seconds(bundle)}")


if __name__ == "__main__":
    main()
