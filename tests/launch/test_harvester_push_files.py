"""Harvester's push mode as files in the worker's access point (the contract its SharedFileMessenger reads),
with the pilot's command line: the job from pandaJobData.out, the reports in worker_attributes.json,
jobReport.json and event_status.dump.json, the requests to the factory."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path
from urllib.parse import urlencode

import pytest

from pilot.errors import ErrorCode, ExitCode
from tests.e2e.conftest import QUEUE, Site


def push_job(site: Site, panda_id: int, script: str, outputs: tuple[str, ...] = ()) -> dict:
    """A job as Harvester writes it: the definition the pilot would have received, not a job file of its own."""
    job = site.add_job(panda_id, script, outputs=outputs)
    (site.jobs / f"{panda_id}.json").unlink()
    return job


def run_worker(site: Site, access_point: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pilot", "run", "--queue", QUEUE, "--access-point", str(access_point),
            "--queue-config", str(site.write_queue()), "--workdir", str(access_point / "work"),
            "--max-no-job", "1", "--no-job-wait", "0.05", "--batch-id", "77", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("form", ["json", "cgi"])
def test_the_job_from_the_factory_and_the_report_in_its_files(site: Site, form: str) -> None:
    job = push_job(site, 51, "echo data > out51.dat; echo '{\"exitCode\": 0, \"nEvents\": 3}' > jobReport.json",
                   ("out51.dat",))
    ap = site.root / "access-point"
    ap.mkdir()
    text = json.dumps({"51": job}) if form == "json" else urlencode(job)
    (ap / "pandaJobData.out").write_text(text)
    result = run_worker(site, ap)
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]

    attributes = read(ap / "worker_attributes.json")
    assert attributes["jobStatus"] == "finished"
    assert attributes["pilotErrorCode"] == 0 and attributes["transExitCode"] == 0
    assert attributes["batchID"] == "77" and attributes["pilotID"].endswith("|PR|0.1.0")
    assert read(ap / "jobReport.json")["nEvents"] == 3
    outputs = read(ap / "event_status.dump.json")["51"]
    by_type = {entry["type"]: entry for entry in outputs}
    stored = site.se / "out" / "scope" / "out51.dat"
    assert by_type["output"]["path"] == str(stored)
    assert by_type["output"]["fsize"] == stored.stat().st_size
    assert by_type["output"]["chksum"] == f"{zlib.adler32(stored.read_bytes()) & 0xFFFFFFFF:08x}"
    assert by_type["log"]["path"].endswith("51.log.tgz") and by_type["log"]["guid"] == "log-51"
    assert (ap / "worker_heartbeat.json").exists()
    assert not (ap / "kill_worker.json").exists()


def test_a_failed_job_is_final_for_the_factory_too(site: Site) -> None:
    job = push_job(site, 52, "exit 5")
    ap = site.root / "ap"
    ap.mkdir()
    (ap / "pandaJobData.out").write_text(json.dumps({"52": job}))
    assert run_worker(site, ap).returncode == ExitCode.OK
    attributes = read(ap / "worker_attributes.json")
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", ErrorCode.PAYLOAD_FAILED)
    assert [e["type"] for e in read(ap / "event_status.dump.json")["52"]] == ["log"]


def test_without_a_job_file_the_pilot_asks_for_one_then_ends_its_worker(site: Site) -> None:
    ap = site.root / "ap"
    ap.mkdir()
    result = run_worker(site, ap)
    assert result.returncode == ExitCode.NO_JOBS
    assert read(ap / "worker_requestjob.json")["nJobs"] == 1
    assert (ap / "kill_worker.json").exists()


def test_a_broken_job_file_is_a_clear_error(site: Site) -> None:
    ap = site.root / "ap"
    ap.mkdir()
    (ap / "pandaJobData.out").write_text('{"1": {"PandaID": 1}, "2": {"PandaID": 2}}')
    result = run_worker(site, ap)
    assert result.returncode != ExitCode.OK
    assert "holds 2 jobs, not one" in result.stderr
    assert "Traceback" not in result.stderr
