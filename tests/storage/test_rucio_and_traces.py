"""The rucio mover (and its `dq2` name) against a real Rucio server, and the traces every family sends,
read back from where the real server stored them."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.journal import Journal
from pilot.staging import Stager
from sitemovers.base import Outcome
from sitemovers.checksum import file_checksum
from sitemovers.registry import Registry
from sitemovers.rucio import RucioSiteMover
from tests.servers.common import free_port
from tests.servers.rucio import RucioServer
from tests.servers.xrootd import XRootDServer
from tests.storage.conftest import one_file_job

pytestmark = pytest.mark.integration


def stager(rucio_server: RucioServer, **queue) -> Stager:
    settings = dict(name="RUCIO_Q", se="rucio://XRD_DISK", copytool="rucio", copysetup=str(rucio_server.setup_script()),
                    trace_url=rucio_server.trace_url, stagein_retries=1, stageout_retries=1, transfer_retry_wait=0.0)
    settings.update(queue)
    return Stager(QueueConfig(**settings), Registry(), threading.Event(), sleep=lambda s: None)


def journal(work: Path, panda_id: int) -> Journal:
    return Journal.create(work, panda_id, 1, "RUCIO_Q", "node", {"PandaID": str(panda_id)})


def traces_of(server: RucioServer, filename: str) -> list[dict]:
    return [trace for trace in server.traces() if trace.get("filename") == filename]


def registered(server: RucioServer, name: str) -> bool:
    code = ("import sys\nfrom rucio.client import Client\nfrom rucio.common.exception import DataIdentifierNotFound\n"
            "try:\n    Client().get_did('tests', sys.argv[1]); print('yes')\n"
            "except DataIdentifierNotFound:\n    print('no')\n")
    return server.client(code, name).strip() == "yes"


@pytest.mark.parametrize("rse", ["XRD_DISK", "LOCAL_DISK"])
def test_stage_out_unregistered_then_registered_and_stage_in_by_did(rucio_server, tmp_path, rse):
    data = os.urandom(200_000)
    work = tmp_path / "work"
    work.mkdir()
    plain, kept = f"plain.{rse}.root", f"kept.{rse}.root"
    (work / plain).write_bytes(data)
    (work / kept).write_bytes(data)
    job = one_file_job("unused", data, out=plain, PandaID="71")
    done = stager(rucio_server, se=f"rucio://{rse}").stage_out(job, [(job.outputs[0], work / plain)], journal(work, 71))
    assert done[0].fsize == len(data) and done[0].location == f"rucio://{rse}/tests/{plain}"
    assert not registered(rucio_server, plain)  # production stage-out: uploaded, not catalogued

    job = one_file_job("unused", data, out=kept, PandaID="72")
    stager(rucio_server, se=f"rucio://{rse}", rucio_register=True).stage_out(
        job, [(job.outputs[0], work / kept)], journal(work, 72))
    assert registered(rucio_server, kept)

    job = one_file_job(kept, data, PandaID="73")
    inputs = tmp_path / "in"
    inputs.mkdir()
    got = stager(rucio_server, se=f"rucio://{rse}").stage_in(job, inputs, journal(inputs, 73))
    assert (inputs / kept).read_bytes() == data and got[0].checksum == job.inputs[0].checksum
    assert not [n for n in os.listdir(inputs) if n.endswith((".d", ".part"))]  # no temporary left

    for name, event in ((plain, "put_sm"), (kept, "put_sm"), (kept, "get_sm")):
        stored = [t for t in traces_of(rucio_server, name) if t["eventType"] == event]
        assert stored, f"no {event} trace for {name}"
        assert stored[-1]["clientState"] == "DONE" and stored[-1]["protocol"] == "rucio"
        assert stored[-1]["pq"] == "RUCIO_Q" and stored[-1]["scope"] == "tests"


def test_missing_did_is_replica_not_found_and_traced_failed(rucio_server, tmp_path):
    job = one_file_job("never.there", b"x", PandaID="74")
    with pytest.raises(PilotError) as caught:
        stager(rucio_server).stage_in(job, tmp_path, journal(tmp_path, 74))
    assert caught.value.code == ErrorCode.REPLICA_NOT_FOUND
    assert "\n" not in caught.value.diag
    assert traces_of(rucio_server, "never.there")[-1]["clientState"] == "FAILED"


def test_dq2_is_the_rucio_family():
    assert Registry().mover_class("dq2") is RucioSiteMover


def test_every_family_sends_traces_xrootd_and_gfal(rucio_server, xrootd_server: XRootDServer, tmp_path):
    """xrootd and gfal, stage-out then stage-in through the staging loop: a DONE trace each way."""
    area = xrootd_server.data / "traced"
    area.mkdir(exist_ok=True)
    xrootd_server.chown(area)
    for family in ("xrootd", "gfal"):
        data = os.urandom(1000)
        work = tmp_path / family
        work.mkdir()
        name = f"traced-{family}.root"
        (work / name).write_bytes(data)
        queue = dict(se=xrootd_server.root_url(area), copytool=family, copysetup="")
        job = one_file_job(name, data, out=name, PandaID="75")
        stager(rucio_server, **queue).stage_out(job, [(job.outputs[0], work / name)], journal(work, 75))
        inputs = tmp_path / f"{family}-in"
        inputs.mkdir()
        stager(rucio_server, **queue).stage_in(job, inputs, journal(inputs, 76))
        events = {(t["eventType"], t["clientState"], t["protocol"]) for t in traces_of(rucio_server, name)}
        assert events == {("put_sm", "DONE", family), ("get_sm", "DONE", family)}


def test_trace_endpoint_down_never_fails_a_transfer(rucio_server, xrootd_server, tmp_path):
    data = os.urandom(1000)
    (tmp_path / "down.root").write_bytes(data)
    job = one_file_job("x", data, out="down.root", PandaID="77")
    queue = dict(se=xrootd_server.root_url(xrootd_server.data / "traced"), copytool="xrootd",
                 trace_url=f"http://127.0.0.1:{free_port()}/traces/")
    done = stager(rucio_server, **queue).stage_out(job, [(job.outputs[0], tmp_path / "down.root")],
                                                   journal(tmp_path, 77))
    assert done[0].fsize == 1000
    assert json.dumps(traces_of(rucio_server, "down.root")) == "[]"


def test_name_rucio_refuses_fails_in_one_line_and_leaves_nothing(rucio_server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "a b.root").write_bytes(b"data")
    job = one_file_job("x", b"data", out="a b.root", PandaID="78")
    with pytest.raises(PilotError) as caught:
        stager(rucio_server, rucio_register=True).stage_out(job, [(job.outputs[0], work / "a b.root")],
                                                          journal(tmp_path, 78))
    assert caught.value.code == ErrorCode.STAGEOUT_FAILED
    assert "\n" not in caught.value.diag and "a b.root" in caught.value.diag
    assert not any("a b.root" in str(path) for path in Path(rucio_server.base / "rse").rglob("*"))
    assert os.listdir(work) == ["a b.root"]  # no staging link left beside it


def test_bulk_moves_a_jobs_files_in_one_client_call_each_way(rucio_server, tmp_path):
    """The rucio mover is `bulk`: staging hands it all the job's inputs (then all its outputs) at once, one
    client call each way; each file keeps its own journal event and its own trace."""
    calls: list[str] = []

    class Counted(RucioSiteMover):
        def _call(self, command, args, timeout, cancel=None):
            calls.append(command)
            return super()._call(command, args, timeout, cancel)

    tag = os.urandom(3).hex()
    work = tmp_path / "work"
    work.mkdir()
    names = [f"bulk{n}.{tag}.root" for n in range(3)]
    datas = [os.urandom(20_000 + n) for n in range(3)]
    for name, data in zip(names, datas):
        (work / name).write_bytes(data)
    job = one_file_job("unused", b"", out=names[0], PandaID="79")
    specs = [dataclasses.replace(job.outputs[0], lfn=name) for name in names]
    queue = dict(copytool="bulkrucio", rucio_register=True, transfer_threads=2)
    settings = dict(name="RUCIO_Q", se="rucio://XRD_DISK", copysetup=str(rucio_server.setup_script()),
                    trace_url=rucio_server.trace_url, stagein_retries=1, stageout_retries=1, **queue)
    staging = Stager(QueueConfig(**settings), Registry(extra={"bulkrucio": Counted}), threading.Event())
    out_journal = journal(work, 79)
    done = staging.stage_out(job, [(spec, work / spec.lfn) for spec in specs], out_journal)
    assert calls == ["upload"] and [d.lfn for d in done] == names
    assert all(out_journal.file_info("out", name)["fsize"] == len(data) for name, data in zip(names, datas))

    calls.clear()
    inputs = tmp_path / "in"
    inputs.mkdir()
    job_in = dataclasses.replace(job, inputs=[dataclasses.replace(spec, kind="input", fsize=len(data),
                                                                  checksum=file_checksum(work / spec.lfn))
                                              for spec, data in zip(specs, datas)])
    got = staging.stage_in(job_in, inputs, journal(inputs, 80))
    assert calls == ["download"] and [g.outcome for g in got] == [Outcome.COPIED] * 3
    assert [(inputs / name).read_bytes() for name in names] == datas
    for name in names:
        events = {(t["eventType"], t["clientState"]) for t in traces_of(rucio_server, name)}
        assert events == {("put_sm", "DONE"), ("get_sm", "DONE")}
