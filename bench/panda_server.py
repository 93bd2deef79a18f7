"""The pilot against a real panda-server on loopback, per dialect. Prints figures; never passes or fails.

  requests per job   job requests and updates the pilot sent for each short job (goal: 1 + at most 3)
  latency            client-side time of acquire and update calls (from the pilot's own debug log)
  overhead per job   wall time between two jobs' final reports minus the payload time (as bench/run.py)

Needs the venvs of .ci/provision-panda-server.sh (run it as root first).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import trivial_payload_seconds  # noqa: E402
from tests.integration.pandaserver import launch_panda_server, venv_ready  # noqa: E402

REQUEST = re.compile(r"^(\S+ \S+) .*pilot\.dispatcher\.panda \| (GET|POST) (\S+) -> HTTP \d+ in ([0-9.]+) s")
REPORTED = re.compile(r"^(\S+ \S+) .*pilot\.jobrun \| job (\d+) finished \(error 0\) reported")
JOB_START = re.compile(r"^(\S+ \S+) .*pilot\.jobrun \| job (\d+) \(attempt")


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def measure(version: str, jobs: int) -> None:
    server = launch_panda_server(version)
    try:
        server.discard_pending_jobs()
        ids = [server.insert_job(job_pars="-c true") for _ in range(jobs)]
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "se").mkdir()
            queue = root / "queue.yaml"
            queue.write_text(f"se: {root / 'se'}\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "REQUESTS_"))}
            env["PYTHONPATH"] = str(ROOT)
            argv = [sys.executable, "-m", "pilot", "--log-level", "DEBUG", "run", "--queue", server.site,
                    "--dispatcher", server.url, "--dispatcher-api", server.api, "--cacert", str(server.ca_cert),
                    "--cert", str(server.client_cert), "--key", str(server.client_key), "--queue-config",
                    str(queue), "--workdir", str(root / "work"), "--max-no-job", "1", "--no-job-wait", "0"]
            out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root, timeout=600)
        lines = out.stderr.splitlines()
    finally:
        server.shutdown()

    per_job: dict[int, Counter] = defaultdict(Counter)
    latency: dict[str, list[float]] = defaultdict(list)
    current = 0
    finals: list[float] = []
    for line in lines:
        if m := JOB_START.match(line):
            current = int(m.group(2))
        elif m := REQUEST.match(line):
            kind = "acquire" if ("acquire" in m.group(3) or "getJob" in m.group(3)) else "update"
            latency[kind].append(float(m.group(4)))
            # a job request belongs to the job it brings: counted against the next job started
            per_job[current if kind == "update" else -1][kind] += 1
        elif m := REPORTED.match(line):
            finals.append(stamp(m.group(1)))
            current = 0
    done = [i for i in ids if per_job[i]["update"]]
    updates = [per_job[i]["update"] for i in done]
    acquires = per_job[-1]["acquire"]
    payload = trivial_payload_seconds()
    gaps = [b - a - payload for a, b in zip(finals, finals[1:])]
    print(f"panda-server {version} ({'v1' if version.startswith('1.') else 'legacy'} dialect), {len(done)} jobs:")
    print(f"  requests per job: {acquires / max(1, len(done)):.2f} job requests (one more answered 'no jobs' "
          f"at the end), updates median {statistics.median(updates) if updates else 0:.0f}, max "
          f"{max(updates) if updates else 0}   (goal 1 + at most 3)")
    for kind, values in sorted(latency.items()):
        ordered = sorted(values)
        print(f"  {kind} latency: median {statistics.median(values) * 1000:.1f} ms, "
              f"p90 {ordered[int(0.9 * (len(ordered) - 1))] * 1000:.1f} ms over {len(values)} calls")
    if gaps:
        print(f"  overhead per job: median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s")
    if out.returncode != 0:
        print(f"  pilot exit code {out.returncode}:\n" + "\n".join(lines[-20:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--versions", nargs="+", default=["1.0.4", "0.8.1"])
    args = parser.parse_args()
    for version in args.versions:
        if not venv_ready(version):
            print(f"panda-server {version}: venv missing; run .ci/provision-panda-server.sh first")
            continue
        measure(version, args.jobs)


if __name__ == "__main__":
    main()
