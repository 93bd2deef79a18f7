"""Stager: mover choice, storage paths, journal skips, retries, error codes and the output report."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import pytest

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.job import parse_job
from pilot.journal import Journal
from pilot.staging import Stager, Transferred, error_code, output_report
from sitemovers.base import Failure, SiteMover, TransferError, TransferResult
from sitemovers.checksum import Checksum
from sitemovers.registry import Registry

A = b"first input " * 100
B = b"second input " * 300


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def fake_mover(script: list):
    """A mover class whose get/put raise the Failures in `script` in turn, then succeed.
    Items may be a Failure or a (Failure, checksum_kind) pair. Calls are recorded on the class."""

    class Fake(SiteMover):
        name = "fake"
        calls: list[tuple[str, str]] = []

        def _next(self, what: str, where: str):
            Fake.calls.append((what, where))
            if script:
                item = script.pop(0)
                failure, kind = item if isinstance(item, tuple) else (item, "")
                raise TransferError(failure, f"scripted {failure.value}", checksum_kind=kind)

        def get(self, source, dest, expected, cancel=None):
            self._next("get", source)
            Path(dest).write_bytes(b"got")
            return TransferResult(str(dest), 3, Checksum("adler32", adler(b"got")))

        def put(self, source, destination, expected, cancel=None):
            self._next("put", destination)
            return TransferResult(destination, Path(source).stat().st_size, None)

        def stat(self, url):
            return None

        fetch = send = remove = _rename = None  # get/put are scripted whole

    return Fake


@pytest.fixture
def se(tmp_path):
    path = tmp_path / "se"
    (path / "mc16").mkdir(parents=True)
    (path / "mc16" / "a.root").write_bytes(A)
    (path / "mc16" / "b.root").write_bytes(B)
    return path


@pytest.fixture
def make_job(job_dict):
    def make(**overrides):
        fields = dict(inFiles="a.root,b.root", GUID="ga,gb", fsize=f"{len(A)},{len(B)}",
                      checksum=f"ad:{adler(A)},ad:{adler(B)}", scopeIn="mc16,mc16", dispatchDblock="NULL",
                      realDatasetsIn="NULL", prodDBlockToken="NULL", ddmEndPointIn="NULL",
                      outFiles="out.root,log.tgz", realDatasets="NULL", scopeOut="mc16,mc16",
                      ddmEndPointOut="NULL", destinationDBlockToken="NULL", logGUID="log-guid", scopeLog="NULL")
        fields.update(overrides)
        return parse_job(job_dict(**fields))
    return make


@pytest.fixture
def journal(work):
    return Journal.create(work, 4242, 2, "Q", "node01", {"PandaID": "4242"})


def stager(se, sleep=None, registry=None, cancel=None, **queue) -> Stager:
    # one file at a time unless a test asks for more: call orders and counts stay deterministic
    settings = dict(se=str(se), stagein_retries=3, stageout_retries=2, transfer_retry_wait=7.0, transfer_threads=1)
    settings.update(queue)
    return Stager(QueueConfig(name="Q", **settings), registry or Registry(), cancel or threading.Event(),
                  sleep=sleep or Sleeps())


def code_of(call) -> PilotError:
    with pytest.raises(PilotError) as info:
        call()
    return info.value


# --- stage-in ---------------------------------------------------------------------------------------
def test_stage_in_from_a_directory_se(se, work, journal, make_job):
    done = stager(se).stage_in(make_job(), work, journal)
    assert (work / "a.root").read_bytes() == A and (work / "b.root").read_bytes() == B
    assert [(t.lfn, t.fsize, t.location) for t in done] == [
        ("a.root", len(A), str(work / "a.root")), ("b.root", len(B), str(work / "b.root"))]
    assert done[0].checksum == Checksum("adler32", adler(A))
    saved = Journal.load(journal.path)
    assert saved.file_info("in", "a.root")["fsize"] == len(A)
    assert saved.file_info("in", "b.root")["checksum"] == f"ad:{adler(B)}"


def test_stage_in_from_a_file_url_se(se, work, journal, make_job):
    stager(se=f"file://{se}/").stage_in(make_job(), work, journal)
    assert (work / "b.root").read_bytes() == B


def test_stage_in_without_scope(se, work, journal, make_job):
    (se / "c.root").write_bytes(b"c")
    job = make_job(inFiles="c.root", GUID="NULL", fsize="1", checksum="NULL", scopeIn="NULL")
    stager(se).stage_in(job, work, journal)
    assert (work / "c.root").read_bytes() == b"c"


def test_stage_in_skips_files_already_in_the_journal(se, work, journal, make_job):
    journal.file_done("in", "a.root", fsize=len(A), checksum=f"ad:{adler(A)}", location=str(work / "a.root"))
    (se / "mc16" / "a.root").unlink()  # would fail if it were fetched again
    done = stager(se).stage_in(make_job(), work, journal)
    assert not (work / "a.root").exists()
    assert (work / "b.root").read_bytes() == B
    assert [(t.lfn, t.fsize) for t in done] == [("a.root", len(A)), ("b.root", len(B))]
    assert done[0].checksum == Checksum("adler32", adler(A))


def test_stage_in_with_everything_done_needs_no_mover(se, work, journal, make_job):
    for lfn, data in (("a.root", A), ("b.root", B)):
        journal.file_done("in", lfn, fsize=len(data), checksum="", location=str(work / lfn))
    done = stager(se, copytool="no-such-mover").stage_in(make_job(), work, journal)
    assert [t.checksum for t in done] == [None, None]


def test_stage_in_uses_copytoolin(se, work, journal, make_job):
    fake = fake_mover([])
    registry = Registry(extra={"fake": fake})
    stager(se, registry=registry, copytool="local", copytoolin="fake").stage_in(make_job(), work, journal)
    assert fake.calls == [("get", f"{se}/mc16/a.root"), ("get", f"{se}/mc16/b.root")]


def test_stage_in_applies_copyprefixin(se, work, journal, make_job):
    rewritten = stager("srm://se.example/pnfs", copyprefix="srm://nothing^/nowhere",
                       copyprefixin=f"srm://se.example/pnfs^{se}")
    rewritten.stage_in(make_job(), work, journal)
    assert (work / "a.root").read_bytes() == A


def test_retryable_failures_are_retried_with_the_injected_sleep(se, work, journal, make_job):
    fake = fake_mover([Failure.TIMEOUT, Failure.FAILED])
    sleeps = Sleeps()
    stager(se, sleep=sleeps, registry=Registry(extra={"fake": fake}), copytool="fake").stage_in(
        make_job(), work, journal)
    assert [c[0] for c in fake.calls] == ["get"] * 4  # a.root three times, b.root once
    assert sleeps.calls == [7.0, 7.0]
    assert journal.file_info("in", "a.root") is not None


def test_retries_run_out(se, work, journal, make_job):
    sleeps = Sleeps()
    err = code_of(lambda: stager(se, sleep=sleeps).stage_in(make_job(fsize=f"{len(A) + 1},{len(B)}"), work,
                                                              journal))
    assert err.code == ErrorCode.GET_SIZE_MISMATCH
    assert len(sleeps.calls) == 2  # three attempts, two waits
    assert journal.file_info("in", "a.root") is None
    assert not (work / "a.root").exists()


def test_not_found_is_not_retried(se, work, journal, make_job):
    (se / "mc16" / "a.root").unlink()
    sleeps = Sleeps()
    err = code_of(lambda: stager(se, sleep=sleeps).stage_in(make_job(), work, journal))
    assert err.code == ErrorCode.REPLICA_NOT_FOUND == 1100
    assert sleeps.calls == []


@pytest.mark.parametrize("overrides, code", [
    ({"fsize": f"{len(A) - 1},{len(B)}"}, 1175),
    ({"checksum": f"ad:00000001,ad:{adler(B)}"}, 1171),
    ({"checksum": f"md5:{'0' * 32},ad:{adler(B)}"}, 1145),
])
def test_get_mismatch_codes(se, work, journal, make_job, overrides, code):
    err = code_of(lambda: stager(se).stage_in(make_job(**overrides), work, journal))
    assert err.code == code
    assert "a.root" in err.diag


def test_cancelled_stage_in_does_not_transfer(se, work, journal, make_job):
    cancel = threading.Event()
    cancel.set()
    err = code_of(lambda: stager(se, cancel=cancel).stage_in(make_job(), work, journal))
    assert err.code == ErrorCode.STAGEIN_FAILED
    assert not (work / "a.root").exists()


def test_stage_in_without_se_is_a_clear_error(work, journal, make_job):
    err = code_of(lambda: stager(se="").stage_in(make_job(), work, journal))
    assert err.code == ErrorCode.STAGEIN_FAILED
    assert "no storage endpoint" in err.diag


def test_unknown_copytool(se, work, journal, make_job):
    err = code_of(lambda: stager(se, copytool="teleport").stage_in(make_job(), work, journal))
    assert err.code == ErrorCode.UNKNOWN_COPYTOOL == 1323
    assert "teleport" in err.diag


# --- stage-out --------------------------------------------------------------------------------------
def outputs(job, work, content=b"result data"):
    (work / "out.root").write_bytes(content)
    (work / "log.tgz").write_bytes(b"log tarball")
    return [(job.outputs[0], work / "out.root"), (job.log, work / "log.tgz")]


def test_stage_out_to_production_path_and_report(se, work, journal, make_job):
    job = make_job()
    done = stager(se, seprodpath="/prod/", sepath="/user").stage_out(job, outputs(job, work), journal)
    assert (se / "prod" / "mc16" / "out.root").read_bytes() == b"result data"
    assert (se / "prod" / "mc16" / "log.tgz").read_bytes() == b"log tarball"
    report = output_report(job, done)
    assert report == {
        "out.root": {"guid": job.outputs[0].guid, "fsize": 11, "adler32": adler(b"result data"),
                     "surl": f"{se}/prod/mc16/out.root"},
        "log.tgz": {"guid": "log-guid", "fsize": 11, "adler32": adler(b"log tarball"),
                    "surl": f"{se}/prod/mc16/log.tgz"},
    }
    saved = Journal.load(journal.path)
    assert saved.file_info("out", "out.root")["guid"] == job.outputs[0].guid


def test_stage_out_of_analysis_job_uses_sepath(se, work, journal, make_job):
    job = make_job(transformation="https://server/trf/runGen")
    stager(se, seprodpath="prod", sepath="user").stage_out(job, outputs(job, work), journal)
    assert (se / "user" / "mc16" / "out.root").exists()


def test_stage_out_skips_files_in_the_journal(se, work, journal, make_job):
    job = make_job()
    journal.file_done("out", "out.root", fsize=5, checksum="ad:00000005", location="file:///se/out.root",
                      guid="g-out")
    files = outputs(job, work)
    (work / "out.root").unlink()  # would be "missing" if it were sent again
    done = stager(se).stage_out(job, files, journal)
    assert [(t.lfn, t.location) for t in done] == [("out.root", "file:///se/out.root"),
                                                   ("log.tgz", f"{se}/mc16/log.tgz")]


def test_missing_output(se, work, journal, make_job):
    job = make_job()
    err = code_of(lambda: stager(se).stage_out(job, [(job.outputs[0], work / "out.root")], journal))
    assert err.code == ErrorCode.MISSING_OUTPUT == 1165


def test_empty_output(se, work, journal, make_job):
    job = make_job()
    (work / "out.root").write_bytes(b"")
    err = code_of(lambda: stager(se).stage_out(job, [(job.outputs[0], work / "out.root")], journal))
    assert err.code == ErrorCode.EMPTY_OUTPUT == 1350


def test_stage_out_without_se_is_a_clear_error(work, journal, make_job):
    job = make_job()
    err = code_of(lambda: stager(se="").stage_out(job, outputs(job, work), journal))
    assert err.code == ErrorCode.STAGEOUT_FAILED
    assert "no storage endpoint" in err.diag


@pytest.mark.parametrize("failure, code", [
    (Failure.SIZE_MISMATCH, 1139),
    ((Failure.CHECKSUM_MISMATCH, "adler32"), 1172),
    ((Failure.CHECKSUM_MISMATCH, "md5"), 1141),
    (Failure.TIMEOUT, 1152),
    (Failure.NOT_FOUND, 1137),
    (Failure.AUTH, 1383),
])
def test_put_failure_codes(se, work, journal, make_job, failure, code):
    fake = fake_mover([failure] * 5)
    sleeps = Sleeps()
    job = make_job()
    err = code_of(lambda: stager(se, sleep=sleeps, registry=Registry(extra={"fake": fake}), copytool="fake")
                  .stage_out(job, outputs(job, work), journal))
    assert err.code == code
    kind = failure[0] if isinstance(failure, tuple) else failure
    assert len(fake.calls) == (2 if kind.retryable else 1)  # stageout_retries=2
    assert len(sleeps.calls) == len(fake.calls) - 1
    assert journal.file_info("out", "out.root") is None


def test_put_retry_then_success(se, work, journal, make_job):
    fake = fake_mover([Failure.SIZE_MISMATCH])
    sleeps = Sleeps()
    job = make_job()
    done = stager(se, sleep=sleeps, registry=Registry(extra={"fake": fake}), copytool="fake").stage_out(
        job, outputs(job, work), journal)
    assert [c[0] for c in fake.calls] == ["put", "put", "put"]
    assert sleeps.calls == [7.0]
    assert output_report(job, done)["out.root"] == {"guid": job.outputs[0].guid, "fsize": 11,
                                                    "surl": f"{se}/mc16/out.root"}


# --- error code table and output report -------------------------------------------------------------
@pytest.mark.parametrize("direction, failure, kind, code", [
    ("in", Failure.NOT_FOUND, "", ErrorCode.REPLICA_NOT_FOUND),
    ("in", Failure.SIZE_MISMATCH, "", ErrorCode.GET_SIZE_MISMATCH),
    ("in", Failure.CHECKSUM_MISMATCH, "adler32", ErrorCode.GET_ADLER32_MISMATCH),
    ("in", Failure.CHECKSUM_MISMATCH, "md5", ErrorCode.GET_MD5_MISMATCH),
    ("in", Failure.CHECKSUM_MISMATCH, "", ErrorCode.GET_ADLER32_MISMATCH),
    ("in", Failure.NO_SPACE, "", ErrorCode.NO_LOCAL_SPACE),
    ("in", Failure.TIMEOUT, "", ErrorCode.LOOPING_STAGEIN),
    ("in", Failure.AUTH, "", ErrorCode.STAGEIN_AUTH),
    ("in", Failure.SETUP, "", ErrorCode.SETUP_FAILURE),
    ("out", Failure.EXISTS, "", ErrorCode.FILE_EXISTS),
    ("out", Failure.NO_SPACE, "", ErrorCode.NO_REMOTE_SPACE),
    ("out", Failure.AUTH, "", ErrorCode.STAGEOUT_AUTH),
    ("in", Failure.CANCELLED, "", ErrorCode.STAGEIN_FAILED),
    ("out", Failure.SIZE_MISMATCH, "", ErrorCode.PUT_SIZE_MISMATCH),
    ("out", Failure.CHECKSUM_MISMATCH, "adler32", ErrorCode.PUT_ADLER32_MISMATCH),
    ("out", Failure.CHECKSUM_MISMATCH, "md5", ErrorCode.PUT_MD5_MISMATCH),
    ("out", Failure.TIMEOUT, "", ErrorCode.LOOPING_STAGEOUT),
    ("out", Failure.FAILED, "", ErrorCode.STAGEOUT_FAILED),
])
def test_error_code(direction, failure, kind, code):
    assert error_code(direction, TransferError(failure, "x", checksum_kind=kind)) == code


def test_output_report_md5_and_unknown_lfn(make_job):
    job = make_job()
    report = output_report(job, [
        Transferred("out.root", 5, Checksum("md5", "a" * 32), "root://se//out.root"),
        Transferred("stray.root", 1, None, "root://se//stray.root"),
    ])
    assert report["out.root"] == {"guid": job.outputs[0].guid, "fsize": 5, "md5sum": "a" * 32,
                                  "surl": "root://se//out.root"}
    assert report["stray.root"] == {"guid": "", "fsize": 1, "surl": "root://se//stray.root"}


def test_stage_out_applies_copyprefix_and_reports_the_se_url(se, work, journal, make_job):
    job = make_job()
    done = stager("srm://se.example/pnfs", copyprefix=f"srm://se.example/pnfs^{se}").stage_out(
        job, outputs(job, work), journal)
    assert (se / "mc16" / "out.root").read_bytes() == b"result data"
    assert output_report(job, done)["out.root"]["surl"] == "srm://se.example/pnfs/mc16/out.root"
