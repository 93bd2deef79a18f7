"""The pilot's command line against a real panda-server on loopback, in both dialects.

Jobs are inserted with SQL as the server's own submission leaves them; the pilot takes them over TLS
with a client certificate, runs them with files on a local storage directory, and the server's Adder
pass finalizes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

from pilot.errors import ErrorCode, ExitCode
from tests.e2e.conftest import pids_alive, read_pids, stop_pilot, wait_for
from tests.integration.pandaserver import PandaServer

REPO = Path(__file__).resolve().parents[2]
SCOPE = "pilot-ci"


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


class PilotSite:
    """A storage directory and a queue configuration for one test."""

    def __init__(self, root: Path, server: PandaServer) -> None:
        self.root = root
        self.server = server
        self.se = root / "se"
        (self.se / SCOPE).mkdir(parents=True)
        self.queue = root / "queue.yaml"
        self.queue.write_text(f"se: {self.se}\nseprodpath: prod\nkill_grace: 3\n")
        server.discard_pending_jobs()

    def put_input(self, data: bytes) -> dict[str, str]:
        lfn = f"in-{uuid.uuid4().hex[:12]}.dat"
        (self.se / SCOPE / lfn).write_bytes(data)
        return {"lfn": lfn, "fsize": str(len(data)), "checksum": f"ad:{adler(data)}", "scope": SCOPE}

    def argv(self, *extra: str, allowed: bool = True) -> list[str]:
        srv = self.server
        cert, key = (srv.client_cert, srv.client_key) if allowed else (srv.bad_client_cert, srv.bad_client_key)
        identity = [] if "--proxy" in extra else ["--cert", str(cert), "--key", str(key)]
        return [sys.executable, "-m", "pilot", "run", "--queue", srv.site, "--dispatcher", srv.url,
                "--dispatcher-api", srv.api, "--cacert", str(srv.ca_cert), *identity,
                "--queue-config", str(self.queue), "--workdir", str(self.root / "work"), "--max-no-job", "1",
                "--no-job-wait", "0", "--retry-budget", "120", *extra]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "REQUESTS_", "HTTPS_", "https_"))}
        env["PYTHONPATH"] = str(REPO)
        return env

    def run(self, *extra: str, allowed: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*extra, allowed=allowed), capture_output=True, text=True,
                              timeout=timeout, env=self.env(), cwd=self.root)  # fmt: skip

    @contextlib.contextmanager
    def started(self, *extra: str) -> Iterator[tuple[subprocess.Popen, Path]]:
        """A pilot running in the background, its output in a log file; killed (by PID) if still alive."""
        log = self.root / "pilot.out"
        with open(log, "w") as out:
            proc = subprocess.Popen(self.argv(*extra), stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                                    cwd=self.root)  # fmt: skip
        try:
            yield proc, log
        finally:
            stop_pilot(proc)

    def server_state(self, panda_id: int) -> str:
        return str(self.server.job_state(panda_id).get("jobstatus", ""))


def test_jobs_with_files_go_from_activated_to_finished(panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    jobs = {}
    for n in range(3):
        data = os.urandom(10_000 + n * 4321)
        spec = site.put_input(data)
        out = f"out-{uuid.uuid4().hex[:12]}.dat"
        panda_id = panda_server.insert_job(
            inputs=[spec], outputs=[out], job_pars=f"-c 'cat {spec['lfn']} {spec['lfn']} > {out}'"
        )
        jobs[panda_id] = (out, data + data)
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    panda_server.run_adder()
    for panda_id, (out, content) in jobs.items():
        state = panda_server.job_state(panda_id)
        assert (state["table"], state["jobstatus"]) == ("jobsarchived4", "finished"), state
        assert state["attemptnr"] == 1
        assert state["modificationhost"]  # the node the pilot reported
        stored = (site.se / "prod" / SCOPE / out).read_bytes()
        assert stored == content
        rows = {row["lfn"]: row for row in panda_server.files(panda_id)}
        assert int(rows[out]["fsize"]) == len(content)
        assert rows[out]["checksum"].endswith(adler(content))
        log_row = rows[f"pilot-ci.{panda_id}.log.tgz"]
        log_file = site.se / "prod" / SCOPE / log_row["lfn"]
        assert int(log_row["fsize"]) == log_file.stat().st_size > 0
        assert log_row["checksum"].endswith(adler(log_file.read_bytes()))


def test_server_side_kill_stops_the_payload_and_fails_the_job_1144(panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    pidfile = tmp_path / "payload.pid"
    panda_id = panda_server.insert_job(job_pars=f"-c 'echo $$ > {pidfile}; sleep 600'")
    with site.started("--heartbeat", "1") as (proc, log):
        payload = read_pids(pidfile, 1, timeout=60)[0]
        wait_for(lambda: site.server_state(panda_id) == "running", 60, "the job running on the server")
        panda_server.kill_job(panda_id)
        assert proc.wait(timeout=120) == ExitCode.OK, log.read_text()[-3000:]
    assert pids_alive([payload]) == []
    assert panda_server.job_state(panda_id)["piloterrorcode"] == ErrorCode.KILLED_BY_SERVER


def test_an_x509_proxy_file_is_a_client_identity_too(panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    panda_id = panda_server.insert_job(job_pars="-c true")
    result = site.run("--proxy", str(panda_server.proxy_file))
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    assert site.server_state(panda_id) in ("holding", "finished")


def test_a_refused_identity_stops_the_pilot_at_once(panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    panda_id = panda_server.insert_job(job_pars="-c true")
    begin = time.monotonic()
    result = site.run(allowed=False)
    assert result.returncode == ExitCode.CREDENTIALS, result.stderr[-3000:]
    assert time.monotonic() - begin < 30, "an auth refusal is not retried"
    assert "role" in result.stderr.lower()
    assert site.server_state(panda_id) == "activated", "the job stays for a pilot that may take it"


def test_the_job_survives_a_server_restart(panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    flag = tmp_path / "go"
    out = f"out-{uuid.uuid4().hex[:12]}.dat"
    panda_id = panda_server.insert_job(
        outputs=[out], job_pars=f"-c 'while [ ! -e {flag} ]; do sleep 0.1; done; echo done > {out}'")
    with site.started() as (proc, log):
        wait_for(lambda: site.server_state(panda_id) == "running", 60, "the job running on the server")
        panda_server.stop()
        flag.touch()  # the payload ends while the server is down: the final report must wait for it
        wait_for(lambda: "retry" in log.read_text(), 60, "the pilot retrying its report")
        panda_server.start()
        assert proc.wait(timeout=240) == ExitCode.OK, log.read_text()[-3000:]
    panda_server.run_adder()
    state = panda_server.job_state(panda_id)
    assert (state["table"], state["jobstatus"]) == ("jobsarchived4", "finished"), state


def test_an_undeliverable_final_report_stays_in_the_journal(panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    flag = tmp_path / "go"
    panda_id = panda_server.insert_job(job_pars=f"-c 'while [ ! -e {flag} ]; do sleep 0.1; done'")
    try:
        with site.started("--retry-budget", "3") as (proc, log):
            wait_for(lambda: site.server_state(panda_id) == "running", 60, "the job running on the server")
            panda_server.stop()
            flag.touch()
            assert proc.wait(timeout=120) == ExitCode.SERVER_COMMUNICATION, log.read_text()[-3000:]
    finally:
        panda_server.start()
    journals = list((tmp_path / "work").glob("PanDA_Pilot-*/journal.json"))
    assert len(journals) == 1, "the job's work dir is kept for recovery"
    journal = json.loads(journals[0].read_text())
    assert journal["panda_id"] == panda_id and journal["step"] == "staged_out"
    assert journal["final"]["state"] == "finished"
    assert f"pilot-ci.{panda_id}.log.tgz" in journal["final"]["job_output_report"]
    assert site.server_state(panda_id) == "running", "the server has not heard the end yet"


def test_a_signal_cuts_the_retries_short(panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    panda_server.stop()
    try:
        with site.started("--retry-budget", "600") as (proc, log):
            wait_for(lambda: "retry" in log.read_text(), 60, "the pilot retrying its job request")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        panda_server.start()


def test_the_server_serves_jobs_to_a_pilot_with_the_node_cache_on(panda_server: PandaServer, tmp_path: Path) -> None:
    """The cache report is not sent to a real server (it refuses unknown fields); the cache still works."""
    from pilot.pcache import Pcache, PcacheSettings

    site = PilotSite(tmp_path, panda_server)
    site.queue.write_text(site.queue.read_text() + f"pcache: {tmp_path / 'pcache'}\n")
    data = os.urandom(20_000)
    spec = site.put_input(data)
    jobs = [panda_server.insert_job(inputs=[spec], outputs=[], job_pars=f"-c 'cmp {spec['lfn']} {spec['lfn']}'")
            for _ in range(2)]
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    panda_server.run_adder()
    assert [panda_server.job_state(panda_id)["jobstatus"] for panda_id in jobs] == ["finished", "finished"]
    cache = Pcache(PcacheSettings(root=tmp_path / "pcache"))
    counters = cache.counters()
    assert (counters["misses"], counters["hits"]) == (1, 1)
    assert cache.scan() == [(SCOPE, spec["lfn"], len(data))]
