"""`pandapilot demo`: a throw-away site, a handful of jobs, the pilot over them, and a table of results.

Nothing else is needed: the jobs come from the embedded local dispatcher (a directory), the storage
element is a directory, the payloads are small shell commands.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Optional

from pilot.config import PilotConfig
from pilot.dispatcher.local import LocalDispatcher
from pilot.fsutil import atomic_write_json

QUEUE = "DEMO_SITE"


def _put_input(se: Path, scope: str, name: str, data: bytes) -> dict[str, str]:
    (se / scope).mkdir(parents=True, exist_ok=True)
    (se / scope / name).write_bytes(data)
    return {"lfn": name, "fsize": str(len(data)), "checksum": f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}"}


def _job(panda_id: int, script: str, inputs: list[dict[str, str]], outputs: list[str], **extra: str) -> dict:
    log = f"{panda_id}.log.tgz"
    job = {
        "PandaID": str(panda_id), "attemptNr": "1", "jobsetID": "1", "taskID": "42", "prodSourceLabel": "managed",
        "transformation": "/bin/sh", "jobPars": f"-c {json.dumps(script)}", "coreCount": "1",
        "inFiles": ",".join(f["lfn"] for f in inputs), "fsize": ",".join(f["fsize"] for f in inputs),
        "checksum": ",".join(f["checksum"] for f in inputs), "scopeIn": ",".join("demo" for _ in inputs),
        "GUID": ",".join(f"guid-{panda_id}-{i}" for i, _ in enumerate(inputs)),
        "outFiles": ",".join([*outputs, log]), "scopeOut": ",".join("demo" for _ in [*outputs, log]),
        "realDatasets": ",".join("demo.output" for _ in [*outputs, log]),
        "logFile": log, "logGUID": f"log-guid-{panda_id}", "scopeLog": "demo",
    }
    job.update(extra)
    return job


def build_site(root: Path) -> tuple[Path, Path, Path]:
    """Job directory, storage directory and queue configuration for the demo."""
    jobs, se = root / "jobs", root / "storage"
    jobs.mkdir(parents=True)
    se.mkdir()
    a = _put_input(se, "demo", "events.A.dat", os.urandom(300_000))
    b = _put_input(se, "demo", "events.B.dat", os.urandom(2_000_000))
    definitions = [
        _job(1001, "cat events.A.dat events.B.dat > merged.dat && echo merged", [a, b], ["merged.dat"]),
        _job(1002, "sha1sum events.A.dat > digest.txt && sleep 1", [a], ["digest.txt"]),
        _job(1003, "echo 'something went wrong' >&2; exit 3", [], ["never.dat"]),
        _job(1004, "sleep 600", [], ["stuck.dat"], maxCpuCount="2"),
        _job(1005, "true", [], ["../escape.dat"]),
        _job(1006, "head -c 1000000 /dev/zero > zeros.dat", [], ["zeros.dat"]),
    ]
    for job in definitions:
        atomic_write_json(jobs / f"{job['PandaID']}.json", job)
    queue = root / "queue.yaml"
    queue.write_text(
        f"se: {se}\n"
        "seprodpath: output\n"
        "looping_limit_min: 2        # the demo's looping job is killed after 2 s without file changes\n"
        "looping_check_interval: 0.5\n"
        "kill_grace: 2\n"
        "transfer_retry_wait: 0.5\n"
    )
    return jobs, se, queue


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
    jobs, se, queue = build_site(root)
    panda_ids = sorted(int(p.stem) for p in jobs.glob("*.json"))
    config = PilotConfig(
        queue=QUEUE, dispatcher=str(jobs), workdir=root / "pilot", queue_file=queue, max_no_job=1,
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
