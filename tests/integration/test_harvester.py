"""The real Harvester (its own venv, SQLite) submits the wrapper and the bundle through the single-node Slurm,
talking v1 to the real panda-server 1.0.4 with the harness's client certificate. One Harvester, three queues
(three PanDA sites): pull (mapType NoJob: the pilot asks the server), push with truePilot true (the job in
the access point, reports to the server) and push with truePilot false (reports through the files Harvester
reads back; its propagator and the server's Adder finish the job with its files). The server's tables decide.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for
from tests.integration.conftest import PANDA_IDS, PANDA_VERSIONS
from tests.integration.harvester import HarvesterFactory, Queue, venv_ready
from tests.integration.pandaserver import PandaServer
from tests.integration.slurm import SlurmCluster
from tests.launch.conftest import WRAPPER, node_python

PULL, PUSH, PUSH_FILES = "CI_PULL", "CI_PUSH", "CI_PUSH_FILES"

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

    def pilot(push: bool, true_pilot: bool) -> str:
        words = [str(WRAPPER), "--bundle", str(bundle), "--python", node_python(), "--workdir-base", "{accessPoint}",
                 "--", "--queue", "{computingSite}", "--queue-config", str(queue_file), "--max-no-job", "1",
                 "--no-job-wait", "0", "--retry-budget", "60"]
        if true_pilot:
            words += ["--dispatcher", srv.url, "--cacert", str(srv.ca_cert), "--cert", str(srv.client_cert),
                      "--key", str(srv.client_key)]
        if push:
            words += ["--access-point", "{accessPoint}"]
        return " ".join(words)

    queues = [Queue(PULL, "NoJob", True, pilot(False, True), workers=1),
              Queue(PUSH, "OneToOne", True, pilot(True, True)),
              Queue(PUSH_FILES, "OneToOne", False, pilot(True, False))]
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
