"""Proves the panda-server harness with raw HTTP (no pilot code), in both protocol dialects.

v1 (panda-server 1.0.4): JSON bodies to /api/v1/pilot/{acquire_jobs,update_job}, Accept: application/json.
legacy (panda-server 0.8.1): form-encoded bodies to /server/panda/{getJob,updateJob}, Accept: application/json.
"""

from __future__ import annotations

import json
import uuid
import zlib
from typing import Any

import pytest
import requests

from tests.integration.pandaserver import PandaServer

pytestmark = pytest.mark.integration

JSON = {"Accept": "application/json"}
NODE = "wn01.pilot-ci.example"


# ---- tiny dialect clients (what a pilot sends, nothing more) -----------------------------------


def acquire(server: PandaServer, session: requests.Session) -> tuple[int, Any]:
    """getJob / acquire_jobs; returns (HTTP status, decoded JSON reply)."""
    if server.api == "v1":
        body = {
            "site_name": server.site,
            "prod_source_label": "managed",
            "node": NODE,
            "computing_element": server.site,
            "memory": 2000,
            "disk_space": 10000,
            "n_jobs": 1,
        }
        resp = session.post(f"{server.url}/api/v1/pilot/acquire_jobs", json=body, headers=JSON, timeout=60)
    else:
        form = {
            "siteName": server.site,
            "prodSourceLabel": "managed",
            "node": NODE,
            "computingElement": server.site,
            "mem": "2000",
            "diskSpace": "10000",
        }
        resp = session.post(f"{server.url}/server/panda/getJob", data=form, headers=JSON, timeout=60)
    return resp.status_code, resp.json()


def job_from_reply(server: PandaServer, reply: dict) -> dict:
    if server.api == "v1":
        assert reply["success"] is True, reply
        assert reply["data"]["StatusCode"] == 0
        jobs = reply["data"]["jobs"]
        assert len(jobs) == 1
        return jobs[0]
    assert reply["StatusCode"] == 0, reply
    return reply


def update(
    server: PandaServer, session: requests.Session, panda_id: int, state: str, attempt_nr: int, **extra: Any
) -> dict:
    """updateJob / update_job; returns the reply as {"StatusCode": int, "command": str, ...}."""
    if server.api == "v1":
        body = {
            "job_id": panda_id,
            "job_status": state,
            "attempt_nr": attempt_nr,
            "node": NODE,
            "site_name": server.site,
            **extra,
        }
        resp = session.post(f"{server.url}/api/v1/pilot/update_job", json=body, headers=JSON, timeout=60)
        resp.raise_for_status()
        reply = resp.json()
        assert reply["success"] is True, reply
        return reply["data"]
    names = {
        "job_output_report": "xml",
        "trans_exit_code": "transExitCode",
        "pilot_error_code": "pilotErrorCode",
        "pilot_error_diag": "pilotErrorDiag",
        "cpu_consumption_time": "cpuConsumptionTime",
        "start_time": "startTime",
        "end_time": "endTime",
        "core_count": "coreCount",
    }
    form = {"jobId": str(panda_id), "state": state, "attemptNr": str(attempt_nr), "node": NODE, "siteName": server.site}
    form.update({names[k]: str(v) for k, v in extra.items()})
    resp = session.post(f"{server.url}/server/panda/updateJob", data=form, headers=JSON, timeout=60)
    resp.raise_for_status()
    return resp.json()


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@pytest.fixture
def clean_queue(panda_server: PandaServer) -> PandaServer:
    panda_server.discard_pending_jobs()
    return panda_server


# ---- tests ----------------------------------------------------------------------------------


def test_job_runs_to_finished(clean_queue: PandaServer) -> None:
    server = clean_queue
    in_data = b"input payload\n"
    panda_id = server.insert_job(
        inputs=[
            {
                "lfn": "pilot-ci.input.dat",
                "fsize": len(in_data),
                "checksum": f"ad:{adler32_hex(in_data)}",
                "scope": "pilot-ci",
                "dataset": "pilot-ci.inputs",
            }
        ],
        outputs=["pilot-ci.output.root"],
        transformation="/bin/sh",
        job_pars="-c 'cat pilot-ci.input.dat > pilot-ci.output.root'",
        max_cpu_count=600,
        min_ram_count=1000,
        core_count=1,
    )
    assert server.job_state(panda_id)["jobstatus"] == "activated"

    status, reply = acquire(server, server.session())
    assert status == 200
    job = job_from_reply(server, reply)
    assert int(job["PandaID"]) == panda_id
    assert job["inFiles"] == "pilot-ci.input.dat"
    assert job["fsize"] == str(len(in_data))
    assert job["checksum"] == f"ad:{adler32_hex(in_data)}"
    assert job["scopeIn"] == "pilot-ci"
    out_files = job["outFiles"].split(",")
    assert "pilot-ci.output.root" in out_files and job["logFile"] in out_files
    assert job["transformation"] == "/bin/sh"
    assert job["jobPars"] == "-c 'cat pilot-ci.input.dat > pilot-ci.output.root'"
    assert int(job["attemptNr"]) == 1
    assert int(job["maxCpuCount"]) == 600 and int(job["minRamCount"]) == 1000 and int(job["coreCount"]) == 1
    assert job["prodSourceLabel"] == "managed"
    assert server.job_state(panda_id)["jobstatus"] == "sent"

    # nothing else queued
    status, reply = acquire(server, server.session())
    if server.api == "v1":
        assert reply == {"success": False, "message": "No jobs in PanDA", "data": None}
    else:
        assert reply["StatusCode"] == 20

    running = update(server, server.session(), panda_id, "running", 1, cpu_consumption_time=0)
    assert running["StatusCode"] == 0
    assert running["command"] == "NULL"
    assert server.job_state(panda_id)["jobstatus"] == "running"

    out_data = b"output payload\n" * 10
    log_data = b"log tarball bytes"
    report = {
        "pilot-ci.output.root": {
            "guid": str(uuid.uuid4()),
            "fsize": len(out_data),
            "adler32": adler32_hex(out_data),
            "surl": "file:///tmp/pilot-ci.output.root",
        },
        job["logFile"]: {
            "guid": job["logGUID"],
            "fsize": len(log_data),
            "adler32": adler32_hex(log_data),
            "surl": f"file:///tmp/{job['logFile']}",
        },
    }
    finished = update(
        server,
        server.session(),
        panda_id,
        "finished",
        1,
        job_output_report=json.dumps(report),
        trans_exit_code=0,
        pilot_error_code=0,
        cpu_consumption_time=3,
        start_time="2026-01-01 10:00:00",
        end_time="2026-01-01 10:01:00",
    )
    assert finished["StatusCode"] == 0
    assert finished["command"] == "NULL"
    assert server.job_state(panda_id)["jobstatus"] == "holding"

    processed = server.run_adder()
    assert [panda_id, "finished", 1] in [[int(p[0]), p[1], int(p[2])] for p in processed]
    state = server.job_state(panda_id)
    assert state["table"] == "jobsarchived4"
    assert state["jobstatus"] == "finished"
    assert int(state["transexitcode"]) == 0
    rows = {row["lfn"]: row for row in server.files(panda_id)}
    assert int(rows["pilot-ci.output.root"]["fsize"]) == len(out_data)
    assert rows["pilot-ci.output.root"]["checksum"] == f"ad:{adler32_hex(out_data)}"
    assert rows["pilot-ci.output.root"]["guid"] == report["pilot-ci.output.root"]["guid"]
    assert rows[job["logFile"]]["type"] == "log"
    assert int(rows[job["logFile"]]["fsize"]) == len(log_data)
    assert rows[job["logFile"]]["checksum"] == f"ad:{adler32_hex(log_data)}"
    assert rows["pilot-ci.input.dat"]["type"] == "input"


def test_not_allowed_dn_gets_no_role_answer(clean_queue: PandaServer) -> None:
    server = clean_queue
    panda_id = server.insert_job(outputs=["x.root"])
    status, reply = acquire(server, server.session(allowed=False))
    assert status == 200
    if server.api == "v1":
        assert reply == {
            "success": False,
            "message": "no production/pilot role in VOMS FQANs or non pilot owner",
            "data": None,
        }
    else:
        assert reply["StatusCode"] == 60
    assert server.job_state(panda_id)["jobstatus"] == "activated"


def test_kill_surfaces_as_tobekilled(clean_queue: PandaServer) -> None:
    server = clean_queue
    panda_id = server.insert_job(outputs=["killed.root"])
    # the X509_USER_PROXY-style file (certificate + key in one PEM) works as the client certificate
    proxy_session = requests.Session()
    proxy_session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides verify=
    proxy_session.verify = str(server.ca_cert)
    proxy_session.cert = str(server.proxy_file)
    _, reply = acquire(server, proxy_session)
    job = job_from_reply(server, reply)
    assert int(job["PandaID"]) == panda_id
    assert update(server, server.session(), panda_id, "running", 1)["command"] == "NULL"

    server.kill_job(panda_id)
    assert server.job_state(panda_id)["commandtopilot"] == "tobekilled"
    reply = update(server, server.session(), panda_id, "running", 1)
    assert reply["StatusCode"] == 0
    assert reply["command"] == "tobekilled"


def test_front_stop_start_keeps_url(clean_queue: PandaServer) -> None:
    server = clean_queue
    url = server.url
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        acquire(server, server.session())
    server.start()
    assert server.url == url
    status, reply = acquire(server, server.session())
    assert status == 200
    if server.api == "v1":
        assert reply["message"] == "No jobs in PanDA"
    else:
        assert reply["StatusCode"] == 20
