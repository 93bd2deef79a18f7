"""The real Harvester (its own venv, SQLite) submits the wrapper and the bundle through the single-node Slurm,
talking v1 to the real panda-server 1.0.4 with the harness's client certificate. One Harvester, six queues
(six PanDA sites): pull (mapType NoJob: the pilot asks the server), push with truePilot true (the job in
the access point, reports to the server) and push with truePilot false (reports through the files Harvester
reads back; its propagator and the server's Adder finish the job with its files); and the pilot's requests to
the factory, acted on by Harvester: its kill request (kill_worker.json: the monitor marks the worker, the
sweeper scancels it), its heartbeat (worker_heartbeat.json, checked against the queue's messenger
worker_heartbeat limit: a stopped pilot goes stale and is killed) and its job request (worker_requestjob.json:
Harvester 0.7.5 reads it but never feeds a job for it, see the README's Harvester section).
The server's tables decide (its jobs and its harvester_workers rows), with Harvester's and Slurm's records.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import psutil
import pytest

from tests.e2e.conftest import wait_for
from tests.integration.conftest import PANDA_IDS, PANDA_VERSIONS
from tests.integration.harvester import HARVESTER_ID, HarvesterFactory, Queue, venv_ready
from tests.integration.pandaserver import PandaServer
from tests.integration.slurm import SlurmCluster
from tests.launch.conftest import WRAPPER, node_python

PULL, PUSH, PUSH_FILES = "CI_PULL", "CI_PUSH", "CI_PUSH_FILES"
KILL, HEARTBEAT, LATE = "CI_KILL", "CI_HEARTBEAT", "CI_LATE"
HOLD = 300  # s the kill queue's batch job holds its allocation after the pilot (a site's further steps)

# Harvester 0.7.5 talks to the server only through the v1 API (harvestercommunicator/panda_communicator.py:70-78
# takes server_api_url_ssl, or makes <host>/api/v1 of a legacy pandaURLSSL; no call uses /server/panda): a case
# against the legacy panda-server 0.8.1 cannot exist, so none is generated (the session's v1 server is shared).
V1 = PANDA_IDS.index("v1")
pytestmark = pytest.mark.parametrize("panda_server", [PANDA_VERSIONS[V1]], ids=[PANDA_IDS[V1]], indirect=True)


@pytest.fixture(scope="module")
def harvester(panda_server: PandaServer, slurm: SlurmCluster, bundle: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarvesterFactory]:
    if not venv_ready():
        pytest.skip("Harvester's venv is missing: run .ci/provision-harvester.sh (as root) first")
    root = tmp_path_factory.mktemp("harvester")
    (root / "se").mkdir()
    queue_file = root / "queue.yaml"
    queue_file.write_text(f"se: {root / 'se'}\nseprodpath: prod\n")
    srv = panda_server

    def pilot(push: bool, true_pilot: bool, *extra: str) -> str:
        words = [str(WRAPPER), "--bundle", str(bundle), "--python", node_python(), "--workdir-base", "{accessPoint}",
                 "--", "--queue", "{computingSite}", "--queue-config", str(queue_file), "--max-no-job", "1",
                 "--no-job-wait", "0", "--retry-budget", "60"]
        if true_pilot:
            words += ["--dispatcher", srv.url, "--cacert", str(srv.ca_cert), "--cert", str(srv.client_cert),
                      "--key", str(srv.client_key)]
        if push:
            words += ["--access-point", "{accessPoint}"]
        return " ".join(words + list(extra))

    queues = [Queue(PULL, "NoJob", True, pilot(False, True), workers=1),
              Queue(PUSH, "OneToOne", True, pilot(True, True)),
              Queue(PUSH_FILES, "OneToOne", False, pilot(True, False)),
              Queue(KILL, "OneToOne", True, pilot(True, True), workers=1, after_pilot=f"sleep {HOLD}"),
              Queue(HEARTBEAT, "OneToOne", True, pilot(True, True, "--worker-heartbeat", "5"), heartbeat_limit=1),
              # one worker at a time (workers=1), whose pilot would take a second job on request
              Queue(LATE, "OneToOne", True, pilot(True, True, "--max-jobs", "2", "--no-job-wait", "600"), workers=1,
                    late_binding=True)]  # fmt: skip
    factory = HarvesterFactory(root, srv, slurm, queues)
    factory.start()
    try:
        yield factory
    finally:
        factory.stop()
        srv.discard_pending_jobs()


def insert_jobs(server: PandaServer, site: str, count: int) -> dict[int, str]:
    jobs = {}
    for _ in range(count):
        out = f"out-{uuid.uuid4().hex[:10]}.dat"
        jobs[server.insert_job(site=site, outputs=[out], job_pars=f"-c 'echo {out} > {out}'")] = out
    return jobs


def wait_final(server: PandaServer, panda_ids: list[int], factory: HarvesterFactory) -> None:
    def done() -> bool:
        return all(server.job_state(p)["jobstatus"] in ("holding", "finished", "failed") for p in panda_ids)

    try:
        wait_for(done, 240, f"jobs {panda_ids} to reach a final state")
    except AssertionError:
        raise AssertionError(f"{[server.job_state(p)['jobstatus'] for p in panda_ids]}\n"
                             f"{factory.tail('panda-submitter.log')}\n{factory.tail('panda-monitor.log')}") from None
    server.run_adder()


def check_finished_by_harvester_pilots(server: PandaServer, factory: HarvesterFactory, site: str,
                                       jobs: dict[int, str]) -> None:
    batch_ids = {str(w["batchID"]) for w in factory.workers() if w["computingSite"] == site and w["batchID"]}
    for panda_id, out in jobs.items():
        state = server.job_state(panda_id)
        assert (state["table"], state["jobstatus"], state["attemptnr"]) == ("jobsarchived4", "finished", 1), state
        assert state["batchid"] in batch_ids, "run by a pilot Harvester submitted"
        rows = {row["lfn"]: row for row in server.files(panda_id)}
        stored = factory.root / "se" / "prod" / "pilot-ci" / out
        assert int(rows[out]["fsize"]) == stored.stat().st_size
        assert rows[out]["checksum"] == f"ad:{zlib.adler32(stored.read_bytes()) & 0xFFFFFFFF:08x}"
        log = factory.root / "se" / "prod" / "pilot-ci" / f"pilot-ci.{panda_id}.log.tgz"
        assert int(rows[log.name]["fsize"]) == log.stat().st_size


def test_pull_mode_pilots_ask_the_server(harvester: HarvesterFactory, panda_server: PandaServer) -> None:
    jobs = insert_jobs(panda_server, PULL, 3)
    wait_final(panda_server, list(jobs), harvester)
    check_finished_by_harvester_pilots(panda_server, harvester, PULL, jobs)
    assert all(panda_server.job_state(p)["pilotid"].endswith("|PR|0.1.0") for p in jobs)


def test_push_mode_with_a_true_pilot(harvester: HarvesterFactory, panda_server: PandaServer) -> None:
    jobs = insert_jobs(panda_server, PUSH, 2)
    wait_final(panda_server, list(jobs), harvester)
    check_finished_by_harvester_pilots(panda_server, harvester, PUSH, jobs)
    assert all(panda_server.job_state(p)["pilotid"].endswith("|PR|0.1.0") for p in jobs), "the pilot reported"


def test_push_mode_reporting_through_harvester(harvester: HarvesterFactory, panda_server: PandaServer) -> None:
    jobs = insert_jobs(panda_server, PUSH_FILES, 2)
    wait_final(panda_server, list(jobs), harvester)
    check_finished_by_harvester_pilots(panda_server, harvester, PUSH_FILES, jobs)


def server_worker(server: PandaServer, worker_id: int) -> dict:
    """The server's row for a Harvester worker (harvester_workers, sent by Harvester's propagator)."""
    rows = server.sql("SELECT * FROM doma_panda.harvester_workers WHERE harvesterid = %s AND workerid = %s",
                      (HARVESTER_ID, worker_id))
    return rows[0] if rows else {}


def worker_of(factory: HarvesterFactory, panda_id: int, timeout: float = 180) -> dict:
    return wait_for(lambda: factory.worker_of(panda_id), timeout, f"Harvester's worker for job {panda_id}")


def log_time(line: str) -> float:
    """The time of a Harvester log line (`2026-11-28 07:18:08,673 ...`, local time)."""
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000


def pilot_process(access_point: Path) -> Optional[psutil.Process]:
    """The pilot (`python BUNDLE run ... --access-point AP`) that the wrapper started for this worker."""
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if len(argv) > 2 and argv[2] == "run" and str(access_point) in argv and argv[1].endswith(".pyz"):
            return proc
    return None


def test_the_pilots_kill_request_ends_its_worker_through_slurm(harvester: HarvesterFactory,
                                                                 panda_server: PandaServer,
                                                                 slurm: SlurmCluster) -> None:
    """The pilot ends and asks the factory to end its worker (kill_worker.json) while the batch job would hold its
    allocation for HOLD s more: Harvester's monitor marks the worker, its sweeper scancels the batch job."""
    jobs = insert_jobs(panda_server, KILL, 1)
    panda_id = next(iter(jobs))
    wait_final(panda_server, [panda_id], harvester)
    worker = worker_of(harvester, panda_id)
    ap = harvester.access_points(KILL) / str(worker["workerID"])
    assert json.loads((ap / "kill_worker.json").read_text())["reason"] == f"the pilot ends after job {panda_id}"

    def cancelled() -> Optional[dict]:
        row = harvester.worker_of(panda_id)
        return row if row and row["status"] == "cancelled" else None

    try:
        worker = wait_for(cancelled, HOLD / 2, f"worker {worker['workerID']} to be cancelled")
    except AssertionError:
        raise AssertionError(f"{harvester.worker_of(panda_id)}\n{harvester.tail('panda-monitor.log')}\n"
                             f"{harvester.tail('panda-sweeper.log')}") from None
    assert harvester.log_lines("monitor", f"kill workerID={worker['workerID']} as requested")
    assert harvester.log_lines("slurm_sweeper", f"Succeeded to kill workerID={worker['workerID']}")
    assert slurm.wait_finished([str(worker["batchID"])], 60)[str(worker["batchID"])].state == "CANCELLED"
    wait_for(lambda: server_worker(panda_server, worker["workerID"]).get("status") == "cancelled", 60,
             "the server's record of the worker to say cancelled")
    check_finished_by_harvester_pilots(panda_server, harvester, KILL, jobs)  # the kill came after the final report


def test_a_stopped_pilots_heartbeat_goes_stale_and_harvester_kills_its_worker(harvester: HarvesterFactory,
                                                                              panda_server: PandaServer,
                                                                              slurm: SlurmCluster) -> None:
    """Queue limit 1 min, pilots beat every 5 s. A pilot whose job outlives the limit is left alone; a pilot that
    is SIGSTOPped goes stale: Harvester kills its worker (scancel: SIGCONT, SIGTERM), the pilot wakes and reports
    its job failed with 1201."""
    alive = panda_server.insert_job(site=HEARTBEAT, job_pars="-c 'sleep 75'")
    stopped = panda_server.insert_job(site=HEARTBEAT, job_pars="-c 'sleep 600'")
    worker = worker_of(harvester, stopped)
    ap = harvester.access_points(HEARTBEAT) / str(worker["workerID"])
    wait_for(lambda: panda_server.job_state(stopped)["jobstatus"] == "running", 180, f"job {stopped} to run")
    pilot = wait_for(lambda: pilot_process(ap), 60, f"the pilot of worker {worker['workerID']}")
    os.kill(pilot.pid, signal.SIGSTOP)
    last_beat = (ap / "worker_heartbeat.json").stat().st_mtime
    wait_final(panda_server, [alive, stopped], harvester)

    state = panda_server.job_state(stopped)
    assert (state["table"], state["jobstatus"], state["piloterrorcode"]) == ("jobsarchived4", "failed", 1201), state
    killed = wait_for(lambda: (w := harvester.worker_of(stopped)) and w["status"] == "cancelled" and w, 60,
                      "Harvester to see its worker cancelled")  # the pilot may report before the monitor looks
    assert "heartbeat expired" in (killed["diagMessage"] or ""), killed
    expired = harvester.log_lines("monitor", f"heartbeat for workerID={killed['workerID']} expired")
    assert expired and log_time(expired[0]) - last_beat >= 60, "stale for the limit, not before"
    assert slurm.wait_finished([str(killed["batchID"])], 60)[str(killed["batchID"])].state == "CANCELLED"
    wait_for(lambda: "heartbeat expired" in (server_worker(panda_server, killed["workerID"]).get("diagmessage") or ""),
             60, "the server's record of the worker to carry the reason")

    state = panda_server.job_state(alive)
    assert (state["table"], state["jobstatus"]) == ("jobsarchived4", "finished"), state
    kept = harvester.worker_of(alive)["workerID"]  # its job ran past the limit (75 s), beating all along
    assert harvester.log_lines("monitor", f"heartbeat for workerID={kept} is valid")
    assert not harvester.log_lines("monitor", f"heartbeat for workerID={kept} expired")


def test_harvester_reads_the_workers_job_request_but_0_7_5_never_answers_it(harvester: HarvesterFactory,
                                                                            panda_server: PandaServer) -> None:
    """The queue sets useJobLateBinding, and its one worker's pilot would take a second job on request. What
    Harvester 0.7.5 does with it (also in the README's Harvester section):
    - it submits the worker with its first job all the same (submitter.py:248 tests `workerID is None` after
      worker_maker.py:54-55 has numbered every new worker), so no worker starts without a job;
    - after that job the pilot writes worker_requestjob.json; the monitor reads it (monitor.py:611-615: the
      worker's nJobsToReFill = nJobs), but the count reaches only the "ANY" pilot type (db_proxy.py:1802-1803),
      which the worker adjuster drops (worker_adjuster.py:650-661) before the submitter reads nReady, so the
      second job is never fed to this worker.
    The pilot, told to stop while it waits, takes its request back and asks for its worker's end; the second job
    runs in a worker of its own. The server's tables and Harvester's show each step."""
    jobs = insert_jobs(panda_server, LATE, 2)
    first, second = sorted(jobs)
    worker = worker_of(harvester, first)
    ap = harvester.access_points(LATE) / str(worker["workerID"])
    assert json.loads((ap / "worker_pandaids.json").read_text()) == [first], "submitted with its job"
    requested = wait_for(lambda: harvester.worker_of(first)["nJobsToReFill"], 180, "Harvester to read the request")
    assert requested == 1, "nJobs read from the pilot's worker_requestjob.json"
    assert panda_server.job_state(first)["jobstatus"] in ("holding", "finished"), "reported final first"
    pilot = wait_for(lambda: pilot_process(ap), 60, "the waiting pilot")
    pilot.send_signal(signal.SIGTERM)  # a batch system's end of the wait; no job is running
    wait_final(panda_server, [second], harvester)
    check_finished_by_harvester_pilots(panda_server, harvester, LATE, jobs)
    assert json.loads((ap / "worker_pandaids.json").read_text()) == [first], "never fed the second job"
    assert not (ap / "worker_requestjob.json").exists(), "the ending pilot took its request back"
    assert json.loads((ap / "kill_worker.json").read_text())["reason"] == f"the pilot ends after job {first}"
    assert harvester.worker_of(second)["workerID"] != worker["workerID"]
    assert panda_server.job_state(second)["batchid"] != str(worker["batchID"])
