"""Full-disk handling: 1098 for a job that ran out of space, the pilot's reserve, a log file that
cannot break the pilot, the log tarball's level and stdout cap."""

from __future__ import annotations

import gzip
import logging
import os
import tarfile
from pathlib import Path

import pytest

from pilot import diskspace
from pilot.config import QueueConfig
from pilot.diskspace import (
    RESERVE,
    QuietFileHandler,
    give_back_reserve,
    local_space_error,
    space_shortage,
    take_reserve,
)
from pilot.errors import ErrorCode, PilotError
from pilot.layout import PILOT_LOG, STDOUT, JobDir
from pilot.report import job_log, make_log_tarball

NO_SPACE = os.strerror(28)


def test_a_log_file_on_a_full_disk_never_raises_nor_prints(capsys) -> None:
    handler = QuietFileHandler(Path("/dev/full"))  # every write: ENOSPC
    logger = logging.getLogger("test.fulldisk")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("lost %s", "x" * 10_000)
    finally:
        logger.removeHandler(handler)
    handler.close()
    assert handler.failures >= 1
    assert capsys.readouterr().err == ""


def test_the_jobs_log_context_survives_a_full_disk(tmp_path: Path, capsys) -> None:
    (tmp_path / PILOT_LOG).symlink_to("/dev/full")
    with job_log(tmp_path):
        logging.getLogger("pilot.test").error("written nowhere")
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("code", [ErrorCode.PAYLOAD_FAILED, ErrorCode.EMPTY_OUTPUT, ErrorCode.LOGFILE_CREATION])
def test_a_local_failure_with_the_payload_saying_disk_full_is_1098_with_its_line(tmp_path: Path, code) -> None:
    stderr = f"step 1\nwriter: error writing 'out': {NO_SPACE}\n12+0 records in\n"
    error = local_space_error(PilotError(code, "payload exited with code 1"), tmp_path, stderr)
    assert error is not None and error.code == ErrorCode.NO_LOCAL_SPACE
    assert error.diag.endswith(f"writer: error writing 'out': {NO_SPACE}")


def test_a_storage_side_failure_or_a_roomy_disk_keeps_its_code(tmp_path: Path) -> None:
    said = f"put failed: {NO_SPACE}"
    assert local_space_error(PilotError(ErrorCode.STAGEOUT_FAILED, said), tmp_path, said) is None
    assert local_space_error(PilotError(ErrorCode.PAYLOAD_FAILED, "exit 3"), tmp_path, "bad input\n") is None


def test_a_full_disk_explains_a_local_failure_even_when_nothing_was_said(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 4096)
    error = local_space_error(PilotError(ErrorCode.EMPTY_OUTPUT, "out.dat is empty"), tmp_path, "")
    assert error is not None and error.code == ErrorCode.NO_LOCAL_SPACE and "out.dat is empty" in error.diag


def test_the_reserve_is_taken_once_and_given_back(tmp_path: Path) -> None:
    assert take_reserve(tmp_path, 65536)
    assert (tmp_path / RESERVE).stat().st_size == 65536
    assert take_reserve(tmp_path, 65536)  # already held
    assert give_back_reserve(tmp_path)
    assert not (tmp_path / RESERVE).exists() and not give_back_reserve(tmp_path)


def test_space_shortage_names_what_a_job_needs(tmp_path: Path) -> None:
    assert space_shortage(tmp_path, 1) is None
    reason = space_shortage(tmp_path, 2**40)
    assert reason is not None and f"a job needs {2**40} MB" in reason


def logs(tmp_path: Path) -> JobDir:
    dirs = JobDir(tmp_path)
    dirs.payload.mkdir()
    dirs.pilot_log.write_text("pilot says\n")
    dirs.stdout.write_bytes(b"".join(b"line %06d of the payload's output\n" % i for i in range(20000)))
    return dirs


def members(tarball: Path) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_the_tarball_keeps_the_end_of_a_large_stdout(tmp_path: Path) -> None:
    dirs = logs(tmp_path)
    kept = members(make_log_tarball(dirs, "x.log.tgz", level=1, stdout_max=1000))
    assert len(kept[f"x.log/{STDOUT}"]) == 1000
    assert kept[f"x.log/{STDOUT}"].endswith(b"line 019999 of the payload's output\n")
    assert kept[f"x.log/{PILOT_LOG}"] == b"pilot says\n"
    whole = members(make_log_tarball(dirs, "y.log.tgz", level=1, stdout_max=0))
    assert whole[f"y.log/{STDOUT}"] == dirs.stdout.read_bytes()


@pytest.mark.parametrize("level, flag", [(1, 4), (9, 2)])  # gzip's XFL byte: 4 fastest, 2 best
def test_the_tarball_is_packed_at_the_queue_level(tmp_path: Path, level: int, flag: int) -> None:
    tarball = make_log_tarball(logs(tmp_path), "x.log.tgz", level=level)
    header = tarball.read_bytes()[:10]
    assert header[8] == flag
    assert gzip.decompress(tarball.read_bytes())


def test_payload_links_and_fifos_are_left_out_of_the_tarball(tmp_path: Path) -> None:
    dirs = JobDir(tmp_path)
    dirs.payload.mkdir()
    dirs.pilot_log.write_text("pilot says\n")
    dirs.stdout.symlink_to("/etc/passwd")
    os.mkfifo(dirs.stderr)
    kept = members(make_log_tarball(dirs, "x.log.tgz"))
    assert list(kept) == [f"x.log/{PILOT_LOG}"]


@pytest.mark.parametrize("level", ["10", "-1", "fast"])
def test_a_gzip_level_outside_0_to_9_is_a_configuration_error(level: str) -> None:
    with pytest.raises(ValueError):
        QueueConfig.from_mapping("Q", {"log_gzip_level": level})


def test_failed_journal_saves_are_said_in_the_report(tmp_path: Path, job_dict) -> None:
    from pilot.job import parse_job
    from pilot.report import JobFacts, final_report

    facts = JobFacts(job=parse_job(job_dict()), workdir=tmp_path, error=PilotError(ErrorCode.NO_LOCAL_SPACE, "full"),
                     exit_code=1, files=[], timing={}, started=0.0, journal_unsaved=2, journal_error=NO_SPACE)
    fields = final_report(facts).fields
    assert fields["pilot_error_diag"] == f"full (journal not saved 2x: {NO_SPACE})"
    assert "journalUnsaved=2" in fields["job_metrics"]


def test_a_finished_job_whose_journal_was_not_saved_stays_finished_and_says_so(tmp_path: Path, job_dict) -> None:
    from pilot.job import parse_job
    from pilot.report import JobFacts, final_report

    facts = JobFacts(job=parse_job(job_dict()), workdir=tmp_path, error=None, exit_code=0, files=[], timing={},
                     started=0.0, journal_unsaved=3, journal_error=NO_SPACE)
    report = final_report(facts)
    assert (report.state, report.error_code) == ("finished", 0)
    assert report.fields["pilot_error_diag"] == f"journal not saved 3x: {NO_SPACE}"
    assert "journalUnsaved=3" in report.fields["job_metrics"]
    facts.journal_unsaved = 0
    assert "pilot_error_diag" not in final_report(facts).fields
