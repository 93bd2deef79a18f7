"""The transfer layer: mover lists and fallback, already-done and never-overwrite, untrusted outputs,
direct access and the input manifest, hooks, the prepare phase, many files at once."""

from __future__ import annotations

import json
import os
import threading
import zlib
from pathlib import Path

import pytest

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.job import parse_job
from pilot.journal import Journal
from pilot.layout import INPUT_MANIFEST, POOL_FILE_CATALOG
from pilot.staging import Stager
from sitemovers.base import Failure, Outcome, TransferError, TransferResult, is_partial, partial_name
from sitemovers.local import LocalSiteMover
from sitemovers.registry import Registry

A = b"first input " * 100


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@pytest.fixture
def se(tmp_path):
    path = tmp_path / "se"
    (path / "mc16").mkdir(parents=True)
    (path / "mc16" / "a.root").write_bytes(A)
    return path


@pytest.fixture
def journal(work):
    return Journal.create(work, 1, 1, "Q", "node", {"PandaID": "1"})


def make_job(job_dict, **overrides):
    fields = dict(inFiles="a.root", GUID="ga", fsize=str(len(A)), checksum=f"ad:{adler(A)}", scopeIn="mc16",
                  dispatchDblock="NULL", realDatasetsIn="NULL", prodDBlockToken="NULL", ddmEndPointIn="NULL",
                  outFiles="out.root,log.tgz", realDatasets="NULL", scopeOut="mc16,mc16", ddmEndPointOut="NULL",
                  destinationDBlockToken="NULL", logGUID="log-guid", scopeLog="NULL")
    fields.update(overrides)
    return parse_job(job_dict(**fields))


def stager(se, registry=None, hooks=(), **queue) -> Stager:
    settings = dict(se=str(se), stagein_retries=1, stageout_retries=1, transfer_retry_wait=0.0)
    settings.update(queue)
    return Stager(QueueConfig(name="Q", **settings), registry or Registry(), threading.Event(),
                  sleep=lambda s: None, hooks=hooks)


def refused(call) -> PilotError:
    with pytest.raises(PilotError) as info:
        call()
    return info.value


class Broken(LocalSiteMover):
    """A mover whose access path fails (another mover may do) or whose file is missing (none may)."""

    name = "broken"
    failure = Failure.FAILED
    calls = 0

    def fetch(self, source, tmp, expected, cancel):
        type(self).calls += 1
        raise TransferError(self.failure, f"broken: {self.failure.value}")


# --- mover lists and fallback ---------------------------------------------------------------------------
def test_mover_lists_from_the_queue():
    queue = QueueConfig(copytool="local", copytools="xrootd, local,xrootd", copytoolin="lsm")
    assert queue.movers("out") == ["xrootd", "local"]
    assert queue.movers("in") == ["lsm"]
    assert QueueConfig(copytool="a", copytoolsin="b,c", copytoolin="d").movers("in") == ["b", "c"]
    assert QueueConfig(copytool="a").movers("in") == ["a"]


def test_fallback_to_the_next_mover_on_an_access_failure(se, work, journal, job_dict):
    Broken.calls = 0
    registry = Registry(extra={"broken": Broken})
    done = stager(se, registry=registry, copytoolsin="broken,local").stage_in(make_job(job_dict), work, journal)
    assert Broken.calls == 1
    assert (work / "a.root").read_bytes() == A and done[0].outcome is Outcome.COPIED


def test_no_fallback_when_the_file_itself_is_missing(se, work, journal, job_dict):
    class Missing(Broken):
        failure = Failure.NOT_FOUND

    registry = Registry(extra={"missing": Missing})
    err = refused(lambda: stager(se, registry=registry, copytoolsin="missing,local").stage_in(
        make_job(job_dict), work, journal))
    assert err.code == ErrorCode.REPLICA_NOT_FOUND
    assert not (work / "a.root").exists()


# --- stage-out: already done, never overwrite, untrusted outputs ----------------------------------------
def outputs(job, work, data=b"result"):
    (work / "out.root").write_bytes(data)
    return [(job.outputs[0], work / "out.root")]


def test_destination_with_the_same_file_is_already_done(se, work, journal, job_dict):
    (se / "mc16" / "out.root").write_bytes(b"result")
    job = make_job(job_dict)
    done = stager(se).stage_out(job, outputs(job, work), journal)
    assert done[0].outcome is Outcome.ALREADY_DONE
    assert (done[0].fsize, done[0].checksum.value) == (6, adler(b"result"))
    assert journal.file_info("out", "out.root")["outcome"] == "already_done"


def test_destination_with_a_different_file_is_never_overwritten(se, work, journal, job_dict):
    job = make_job(job_dict, outFiles="a.root,log.tgz")  # an output named like an input: same <se>/<scope>/
    (work / "a.root").write_bytes(b"something else")
    err = refused(lambda: stager(se).stage_out(job, [(job.outputs[0], work / "a.root")], journal))
    assert err.code == ErrorCode.FILE_EXISTS == 1221
    assert "already holds a different file" in err.diag and "\n" not in err.diag
    assert (se / "mc16" / "a.root").read_bytes() == A
    assert sorted(os.listdir(se / "mc16")) == ["a.root"]


@pytest.mark.parametrize("plant", ["symlink", "directory", "fifo"])
def test_an_output_that_is_not_a_regular_file_is_refused(se, work, journal, job_dict, tmp_path, plant):
    secret = tmp_path / "proxy"
    secret.write_bytes(b"the pilot's own credentials")
    target = work / "out.root"
    if plant == "symlink":
        target.symlink_to(secret)
    elif plant == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)
    job = make_job(job_dict)
    err = refused(lambda: stager(se).stage_out(job, [(job.outputs[0], target)], journal))
    assert err.code == ErrorCode.MISSING_OUTPUT
    assert "not shipped" in err.diag and "\n" not in err.diag
    assert not (se / "mc16" / "out.root").exists()


def test_other_outputs_are_unaffected_by_a_refused_one(se, work, journal, job_dict):
    job = make_job(job_dict, outFiles="out.root,bad.root,log.tgz", scopeOut="mc16,mc16,mc16")
    (work / "out.root").write_bytes(b"good")
    (work / "bad.root").symlink_to("/etc/passwd")
    files = [(job.outputs[0], work / "out.root"), (job.outputs[1], work / "bad.root")]
    refused(lambda: stager(se).stage_out(job, files, journal))
    assert (se / "mc16" / "out.root").read_bytes() == b"good"
    assert not (se / "mc16" / "bad.root").exists()


def test_no_temporary_name_survives_a_failed_put(se, work, journal, job_dict, monkeypatch):
    job = make_job(job_dict)

    monkeypatch.setattr(LocalSiteMover, "stat", lambda self, url: None)  # the storage never shows the file
    err = refused(lambda: stager(se).stage_out(job, outputs(job, work), journal))
    assert err.code == ErrorCode.STAGEOUT_FAILED
    assert os.listdir(se / "mc16") == ["a.root"]


# --- direct access and the manifest ---------------------------------------------------------------------
def test_inputs_copied_are_listed_in_the_manifest(se, work, journal, job_dict):
    stager(se).stage_in(make_job(job_dict), work, journal)
    manifest = json.loads((work / INPUT_MANIFEST).read_text())
    assert manifest["files"] == [{"lfn": "a.root", "guid": "ga", "scope": "mc16", "fsize": len(A),
                                  "checksum": f"ad:{adler(A)}", "outcome": "copied", "path": str(work / "a.root")}]
    assert not (work / POOL_FILE_CATALOG).exists()


class Direct(LocalSiteMover):
    name = "direct-local"
    direct_read = True

    def turl(self, url):
        return "root://127.0.0.1:1094/" + url


@pytest.mark.parametrize("overrides, queue, direct", [
    ({"transferType": "direct"}, {"allowdirectaccess": True}, True),
    ({"jobPars": "--accessmode=direct --in a.root"}, {"allowdirectaccess": True}, True),
    ({"transferType": "direct"}, {"allowdirectaccess": False}, False),  # the queue does not allow it
    ({"transferType": "direct", "prodDBlockToken": "local"}, {"allowdirectaccess": True}, False),  # forbidden
    ({}, {"allowdirectaccess": True}, False),  # the job does not ask
])
def test_direct_access_decision(se, work, journal, job_dict, overrides, queue, direct):
    registry = Registry(extra={"direct-local": Direct})
    done = stager(se, registry=registry, copytool="direct-local", **queue).stage_in(
        make_job(job_dict, **overrides), work, journal)
    manifest = json.loads((work / INPUT_MANIFEST).read_text())["files"][0]
    if direct:
        turl = f"root://127.0.0.1:1094/{se}/mc16/a.root"
        assert done[0].outcome is Outcome.DIRECT and done[0].location == turl
        assert manifest["turl"] == turl and "path" not in manifest
        assert not (work / "a.root").exists()
        assert f'name="{turl}"' in (work / POOL_FILE_CATALOG).read_text()
    else:
        assert done[0].outcome is Outcome.COPIED and (work / "a.root").read_bytes() == A


# --- hooks ----------------------------------------------------------------------------------------------
class Cache:
    def __init__(self, serve: bool) -> None:
        self.serve = serve
        self.filled: list[tuple[str, Path]] = []

    def before_get(self, item):
        if not self.serve:
            return None
        Path(item.dest).write_bytes(A)
        return TransferResult(item.dest, len(A), item.spec.checksum, Outcome.FROM_CACHE)

    def after_get(self, item, path):
        self.filled.append((item.spec.lfn, path))


def test_a_hook_serves_the_file(se, work, journal, job_dict):
    (se / "mc16" / "a.root").unlink()  # would fail if a mover were asked
    cache = Cache(serve=True)
    done = stager(se, hooks=[cache]).stage_in(make_job(job_dict), work, journal)
    assert done[0].outcome is Outcome.FROM_CACHE and cache.filled == []
    assert journal.file_info("in", "a.root")["outcome"] == "from_cache"


def test_after_get_sees_the_final_file(se, work, journal, job_dict):
    cache = Cache(serve=False)
    stager(se, hooks=[cache]).stage_in(make_job(job_dict), work, journal)
    assert cache.filled == [("a.root", work / "a.root")]


def test_a_broken_hook_never_fails_the_transfer(se, work, journal, job_dict):
    class Bad:
        def before_get(self, item):
            raise RuntimeError("cache on fire")

        def after_get(self, item, path):
            raise RuntimeError("cache on fire")

    stager(se, hooks=[Bad()]).stage_in(make_job(job_dict), work, journal)
    assert (work / "a.root").read_bytes() == A


# --- prepare phase, many files --------------------------------------------------------------------------
def test_prepare_then_poll_before_any_copy(se, work, journal, job_dict):
    events = []

    class Tape(LocalSiteMover):
        name = "tape"
        prepare_phase = True

        def prepare(self, urls):
            events.append(("prepare", len(urls)))

        def poll(self, urls):
            events.append(("poll",))
            return {url: len(events) > 2 for url in urls}

        def fetch(self, source, tmp, expected, cancel):
            events.append(("copy",))
            return super().fetch(source, tmp, expected, cancel)

    registry = Registry(extra={"tape": Tape})
    stager(se, registry=registry, copytool="tape").stage_in(make_job(job_dict), work, journal)
    assert events == [("prepare", 1), ("poll",), ("poll",), ("copy",)]


def test_prepare_that_never_ends_is_a_clear_error(se, work, journal, job_dict):
    class Stuck(LocalSiteMover):
        name = "stuck"
        prepare_phase = True

        def poll(self, urls):
            return {}

    registry = Registry(extra={"stuck": Stuck})
    err = refused(lambda: stager(se, registry=registry, copytool="stuck", prepare_timeout=0.0).stage_in(
        make_job(job_dict), work, journal))
    assert err.code == ErrorCode.EXCEEDED_MAX_WAIT


def test_many_files_in_parallel(se, work, journal, job_dict):
    names = [f"f{n}.root" for n in range(40)]
    for name in names:
        (se / "mc16" / name).write_bytes(name.encode())
    job = make_job(job_dict, inFiles=",".join(names), GUID=",".join(f"g{n}" for n in range(40)),
                   fsize=",".join(str(len(n)) for n in names), checksum=",".join(f"ad:{adler(n.encode())}"
                                                                                  for n in names),
                   scopeIn=",".join(["mc16"] * 40), dispatchDblock=",".join(["NULL"] * 40),
                   realDatasetsIn=",".join(["NULL"] * 40), prodDBlockToken=",".join(["NULL"] * 40),
                   ddmEndPointIn=",".join(["NULL"] * 40))
    done = stager(se, transfer_threads=4).stage_in(job, work, journal)
    assert [t.lfn for t in done] == names
    assert all((work / n).read_bytes() == n.encode() for n in names)
    assert len(Journal.load(journal.path).files) == 40


# --- temporary names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.root", "x" * 255, ".hidden", "with space %#"])
def test_partial_names_are_recognised_and_fit(name):
    tmp = partial_name(name)
    assert is_partial(tmp) and len(tmp.encode()) <= 255 and "/" not in tmp
    assert not is_partial(name)
    assert partial_name(name) != tmp  # unique per transfer
