"""What the CASTOR families add to the contract: the stager's prepare phase, service classes by path,
and the LFC registration of outputs (against the stand-ins of tests/standins)."""

from __future__ import annotations

import json
import threading
import zlib

import pytest

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.job import parse_job
from pilot.journal import Journal
from sitemovers.base import Expected, Failure, MoverSettings, TransferError
from sitemovers.castor import CastorSiteMover, RfcpLfcSiteMover, castor_path
from sitemovers.registry import Registry

from .conftest import CASTOR_BASE, family_castor

DATA = b"raw events " * 500
ADLER = f"{zlib.adler32(DATA) & 0xFFFFFFFF:08x}"


@pytest.fixture
def castor(tmp_path, monkeypatch):
    return family_castor(tmp_path, monkeypatch)


def on_tape(tmp_path, rel: str, data: bytes = DATA) -> None:
    """A file migrated to tape and not staged in any service class."""
    path = tmp_path / "castor" / "ns" / CASTOR_BASE.lstrip("/") / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def job_with(job_dict, lfn: str):
    return parse_job(job_dict(inFiles=lfn, GUID="g1", fsize=str(len(DATA)), checksum=f"ad:{ADLER}",
                              scopeIn="raw", dispatchDblock="NULL", realDatasetsIn="NULL", prodDBlockToken="NULL",
                              ddmEndPointIn="NULL", outFiles="log.tgz", realDatasets="NULL", scopeOut="NULL",
                              ddmEndPointOut="NULL", destinationDBlockToken="NULL"))


def stager_for(copytool: str, **queue):
    from pilot.staging import Stager

    settings = dict(name="Q", se=CASTOR_BASE, copytool=copytool, stagein_retries=1, transfer_threads=1)
    settings.update(queue)
    sleeps = []
    return Stager(QueueConfig(**settings), Registry(), threading.Event(), sleep=sleeps.append), sleeps


def test_inputs_on_tape_are_recalled_before_any_copy(castor, tmp_path, work, job_dict):
    on_tape(tmp_path, "raw/data.raw")
    stager, sleeps = stager_for("castor")
    journal = Journal.create(work, 1, 1, "Q", "node", {"PandaID": "1"})
    stager.stage_in(job_with(job_dict, "data.raw"), work, journal)
    assert (work / "data.raw").read_bytes() == DATA
    assert sleeps == [1.0]  # one poll saw STAGEIN, the next STAGED
    assert (tmp_path / "castor" / "pool" / "default" / CASTOR_BASE.lstrip("/") / "raw" / "data.raw").exists()


def test_without_a_recall_a_file_on_tape_cannot_be_copied(castor, tmp_path, work):
    on_tape(tmp_path, "raw/data.raw")
    err = pytest.raises(TransferError, CastorSiteMover().get, f"{CASTOR_BASE}/raw/data.raw", work / "data.raw",
                        Expected(len(DATA))).value
    assert err.failure is Failure.FAILED and "not staged" in err.diag


def test_a_recall_that_never_ends_is_a_clear_error(castor, tmp_path, work, job_dict, monkeypatch):
    on_tape(tmp_path, "raw/data.raw")
    monkeypatch.setattr(CastorSiteMover, "poll", lambda self, urls: {url: False for url in urls})
    stager, _ = stager_for("castor", prepare_timeout=0.0)
    journal = Journal.create(work, 1, 1, "Q", "node", {"PandaID": "1"})
    with pytest.raises(PilotError) as info:
        stager.stage_in(job_with(job_dict, "data.raw"), work, journal)
    assert info.value.code == ErrorCode.EXCEEDED_MAX_WAIT


def test_service_class_chosen_by_path(castor, tmp_path, work):
    on_tape(tmp_path, "raw/data.raw")
    settings = MoverSettings(options={"castor_svcclass": f"{CASTOR_BASE}^t0atlas,/castor/other^atlasdisk",
                                      "castor_svcclasses": "default"})
    mover = CastorSiteMover(settings)
    url = f"{CASTOR_BASE}/raw/data.raw"
    assert mover.classes_for(url) == ["t0atlas"]
    mover.prepare([url])
    assert mover.poll([url]) == {url: False} and mover.poll([url]) == {url: True}
    mover.get(url, work / "data.raw", Expected(len(DATA)))
    assert (tmp_path / "castor" / "pool" / "t0atlas" / CASTOR_BASE.lstrip("/") / "raw" / "data.raw").exists()


def test_classes_are_tried_in_turn(castor, tmp_path, work):
    on_tape(tmp_path, "raw/data.raw")
    staged = tmp_path / "castor" / "pool" / "atlasdisk" / CASTOR_BASE.lstrip("/") / "raw" / "data.raw"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(DATA)
    mover = CastorSiteMover(MoverSettings(options={"castor_svcclasses": "default,atlasdisk"}))
    mover.get(f"{CASTOR_BASE}/raw/data.raw", work / "data.raw", Expected(len(DATA)))
    assert (work / "data.raw").read_bytes() == DATA


@pytest.mark.parametrize("url, path", [
    ("/castor/cern.ch/x", "/castor/cern.ch/x"),
    ("rfio://castoratlas//castor/cern.ch/x", "/castor/cern.ch/x"),
    ("castor:///castor/cern.ch/x", "/castor/cern.ch/x"),
])
def test_castor_paths(url, path):
    assert castor_path(url) == path


def test_a_path_outside_castor_is_for_another_mover():
    with pytest.raises(TransferError) as info:
        castor_path("/data/x")
    assert info.value.failure is Failure.UNSUPPORTED


def test_rfcp_registers_the_replica_with_size_and_checksum(castor, tmp_path, work):
    (work / "out.root").write_bytes(DATA)
    mover = RfcpLfcSiteMover(MoverSettings(options={"lfcpath": "/grid/atlas/users"}))
    surl = f"{CASTOR_BASE}/mc16/out.root"
    mover.put(work / "out.root", surl, Expected(len(DATA), guid="G-1", lfn="out.root"))
    entry = json.loads((tmp_path / "lfc" / "grid" / "atlas" / "users" / "mc16" / "out.root").read_text())
    assert entry == {"guid": "G-1", "lfn": "/grid/atlas/users/mc16/out.root", "surl": surl, "size": len(DATA),
                     "checksum": f"AD:{ADLER}"}


def test_a_failed_registration_is_a_catalogue_failure(castor, tmp_path, work, monkeypatch):
    monkeypatch.setenv("LFC_STANDIN_ROOT", "")  # the catalogue cannot be reached
    (work / "out.root").write_bytes(DATA)
    err = pytest.raises(TransferError, RfcpLfcSiteMover().put, work / "out.root", f"{CASTOR_BASE}/mc16/out.root",
                        Expected(len(DATA), guid="G-1")).value
    assert err.failure is Failure.CATALOG
    from pilot.staging import error_code

    assert error_code("out", err) == ErrorCode.CATALOG_REGISTRATION == 1169
