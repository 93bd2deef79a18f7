"""Harvester's push mode as files in the worker's access point (the contract its SharedFileMessenger reads),
with the pilot's command line: the job from pandaJobData.out, the reports in worker_attributes.json,
jobReport.json and event_status.dump.json, the requests to the factory."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Optional
from urllib.parse import urlencode

import pytest

from pilot.dispatcher.harvester import HarvesterDispatcher
from pilot.errors import ErrorCode, ExitCode
from tests.e2e.conftest import QUEUE, Site, wait_for


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
    assert read(ap / "kill_worker.json")["reason"] == "the pilot ends after job 51", "the worker may end"
    assert not (ap / "worker_requestjob.json").exists(), "the job was there: nothing asked"


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
    assert "asked the factory for a job" in result.stderr
    assert not (ap / "worker_requestjob.json").exists(), "a request left behind would get a job fed to no pilot"
    assert read(ap / "kill_worker.json")["reason"] == "no job received"


def test_the_pilot_asks_for_each_job_and_takes_what_the_factory_feeds(site: Site) -> None:
    """Late binding (no job file at the start), then a further job (--max-jobs 2): each time the pilot writes its
    request and takes the job once Harvester's PandaIDs file names it, as Harvester feeds: the job file in place,
    then worker_pandaids.json."""
    jobs = {panda_id: push_job(site, panda_id, f"echo {panda_id} > late{panda_id}.dat", (f"late{panda_id}.dat",))
            for panda_id in (53, 54)}
    ap = site.root / "ap"
    ap.mkdir()
    argv = [sys.executable, "-m", "pilot", "run", "--queue", QUEUE, "--access-point", str(ap),
            "--queue-config", str(site.write_queue()), "--workdir", str(ap / "work"),
            "--max-no-job", "1", "--no-job-wait", "60", "--max-jobs", "2"]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as pilot:
        try:
            answered: Optional[dict] = None
            for panda_id, job in jobs.items():
                answered = wait_for(lambda last=answered: _new_request(ap, last), 60, f"a request for job {panda_id}")
                assert answered["nJobs"] == 1
                (ap / "pandaJobData.out").write_text(json.dumps({str(panda_id): job}))
                (ap / "worker_pandaids.json").write_text(json.dumps([panda_id]))
            _, stderr = pilot.communicate(timeout=120)
        finally:
            pilot.kill()
    assert pilot.returncode == ExitCode.OK, stderr[-3000:]
    assert stderr.count("asked the factory for a job") == 2
    assert "job 53 finished" in stderr and "job 54 finished" in stderr
    assert read(ap / "worker_attributes.json")["jobStatus"] == "finished"
    assert not (ap / "worker_requestjob.json").exists(), "answered: left in place it asks for a further job"
    assert read(ap / "kill_worker.json")["reason"] == "the pilot ends after job 53, 54"


def _new_request(ap: Path, answered: Optional[dict]) -> Optional[dict]:
    """The pilot's job request, unless it is the one answered already."""
    request = _json_or_none(ap / "worker_requestjob.json")
    return request if request is not None and request != answered else None


def _json_or_none(path: Path) -> Optional[dict]:
    try:
        return read(path)
    except (FileNotFoundError, ValueError):
        return None


def test_the_worker_heartbeat_is_rewritten_on_its_own_thread_until_the_pilot_ends(tmp_path: Path) -> None:
    beat = tmp_path / "worker_heartbeat.json"
    dispatcher = HarvesterDispatcher(tmp_path, heartbeat=0.05)
    try:
        first = read(beat)["time"]  # written at once: Harvester counts a missing file as dead once the worker is old
        wait_for(lambda: read(beat)["time"] > first, 10, "a second heartbeat")
    finally:
        dispatcher.close()
    assert not dispatcher.heartbeat._thread.is_alive(), "stopped with the pilot: a gone pilot goes stale"
    assert read(tmp_path / "kill_worker.json")["reason"] == "no job received"


def test_no_worker_heartbeat_when_switched_off(tmp_path: Path) -> None:
    HarvesterDispatcher(tmp_path, heartbeat=0).close()
    assert not (tmp_path / "worker_heartbeat.json").exists()


def test_a_broken_job_file_is_a_clear_error(site: Site) -> None:
    ap = site.root / "ap"
    ap.mkdir()
    (ap / "pandaJobData.out").write_text('{"1": {"PandaID": 1}, "2": {"PandaID": 2}}')
    result = run_worker(site, ap)
    assert result.returncode != ExitCode.OK
    assert "holds 2 jobs, not one" in result.stderr
    assert "Traceback" not in result.stderr
