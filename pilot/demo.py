"""`pandapilot demo`: a throw-away site, a handful of jobs, the pilot over them, and a table of results.

Nothing else is needed: the jobs come from the embedded local dispatcher (a directory), the storage
element is a directory, the payloads are small shell commands.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from pilot.config import PilotConfig
from pilot.dispatcher.local import LocalDispatcher
from pilot.sitebuilder import Site

QUEUE = "DEMO_SITE"


def build_site(root: Path) -> Site:
    """The demo's site (pilot/sitebuilder.py): two input files in storage and six jobs."""
    site = Site(root, {"seprodpath": "output", "transfer_retry_wait": 0.5, "kill_grace": 2,
                       # the demo's looping job is killed after 2 s without file changes
                       "looping_limit_min": 2, "looping_check_interval": 0.5}, queue=QUEUE)
    a = site.put_input("events.A.dat", os.urandom(300_000), scope="demo")
    b = site.put_input("events.B.dat", os.urandom(2_000_000), scope="demo")
    common = {"scope": "demo", "jobsetID": "1", "taskID": "42", "coreCount": "1"}
    site.add_job(1001, "cat events.A.dat events.B.dat > merged.dat && echo merged", (a, b), ("merged.dat",), **common)
    site.add_job(1002, "sha1sum events.A.dat > digest.txt && sleep 1", (a,), ("digest.txt",), **common)
    site.add_job(1003, "echo 'something went wrong' >&2; exit 3", (), ("never.dat",), **common)
    site.add_job(1004, "sleep 600", (), ("stuck.dat",), maxCpuCount="2", **common)
    site.add_job(1005, "true", (), ("../escape.dat",), **common)
    site.add_job(1006, "head -c 1000000 /dev/zero > zeros.dat", (), ("zeros.dat",), **common)
    return site


def summary(dispatcher: LocalDispatcher, panda_ids: list[int]) -> list[dict[str, Any]]:
    rows = []
    for panda_id in panda_ids:
        history = dispatcher.history(panda_id)
        final = next((h for h in reversed(history) if h.get("job_status") in ("finished", "failed")), {})
        report = final.get("job_output_report") or {}
        metrics = dict(item.split("=", 1) for item in final.get("job_metrics", "").split() if "=" in item)
        log = next((v.get("surl", "") for k, v in report.items() if k.endswith(".log.tgz")), "")
        rows.append({
            "job": panda_id, "state": final.get("job_status", "-"), "error": final.get("pilot_error_code", 0),
            "diag": final.get("pilot_error_diag", ""), "exit": final.get("trans_exit_code", ""),
            "seconds": final.get("time", 0) - history[0]["time"] if history else 0.0,
            "bytes_in": int(metrics.get("bytesIn", 0)), "bytes_out": int(metrics.get("bytesOut", 0)), "log": log,
            "updates": len(history),
        })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'job':>5} {'state':9} {'error':>5} {'exit':>4} {'time':>6} {'bytes in':>9} {'bytes out':>9}  diagnostic"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['job']:>5} {r['state']:9} {r['error']:>5} {str(r['exit']):>4} {r['seconds']:>5.2f}s "
              f"{r['bytes_in']:>9} {r['bytes_out']:>9}  {r['diag'][:70]}")


def run_demo(directory: Optional[Path] = None) -> int:
    from pilot.cli import run_pilot

    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="pandapilot-demo-"))
    root = root.absolute()
    site = build_site(root)
    jobs, se = site.jobs, site.se
    panda_ids = sorted(int(p.stem) for p in jobs.glob("*.json"))
    config = PilotConfig(
        queue=QUEUE, dispatcher=str(jobs), workdir=root / "pilot", queue_file=site.write_queue(), max_no_job=1,
        no_job_wait=0.1, max_failures=10, keep_workdirs=True, pilot_id="demo",
    )
    code = run_pilot(config)
    rows = summary(LocalDispatcher(jobs), panda_ids)
    print()
    print_table(rows)
    print()
    print(f"site:          {root}")
    print(f"what the dispatcher received (one JSON line per update): {jobs / 'history'}/<PandaID>.jsonl")
    print(f"job work dirs (pilot.log, payload.stdout/stderr, journal.json): {root / 'pilot'}")
    print(f"log tarballs in storage: {se / 'output' / 'demo'}")
    print(f"pilot exit code: {code}")
    return code
