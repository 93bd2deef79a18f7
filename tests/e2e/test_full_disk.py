"""A full work-dir disk fails the job with 1098 (no local space), never the pilot: a real 4 MB tmpfs."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilot.errors import ErrorCode, ExitCode
from tests.e2e.conftest import Site

FILL = "head -c 8000000 /dev/zero > {target}; exit 1"  # more than the disk holds: head says why it stopped


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, mounted for this test and unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the full-disk tests needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def site_on_small_disk(tmp_path: Path, small_disk: Path) -> Site:
    site = Site(tmp_path, {"min_free_disk": 1})
    site.work = small_disk / "work"  # job dirs on the small disk; jobs, storage and history elsewhere
    return site


def test_a_payload_that_fills_the_disk_fails_1098_and_the_next_job_runs(site_on_small_disk: Site) -> None:
    site = site_on_small_disk
    site.add_job(1, FILL.format(target="fill"))
    site.add_job(2, "echo fine > out.dat", outputs=("out.dat",))
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    final = site.final(1)
    assert (final["job_status"], final["pilot_error_code"]) == ("failed", ErrorCode.NO_LOCAL_SPACE)
    assert "No space left on device" in final["pilot_error_diag"] and "head" in final["pilot_error_diag"]
    assert "\n" not in final["pilot_error_diag"]
    with tarfile.open(site.se / "out" / "scope" / "1.log.tgz") as tar:  # the log was still shipped
        names = tar.getnames()
    assert "1.log/pilot.log" in names and "1.log/journal.json" in names
    assert site.final(2)["job_status"] == "finished"
    assert not site.work.exists() or os.listdir(site.work) == [], "the space reserve is given back at the end"


def test_when_space_does_not_come_back_the_pilot_stops_with_69(site_on_small_disk: Site) -> None:
    site = site_on_small_disk
    site.add_job(1, FILL.format(target="../../filler"))  # outside its own dir: not cleaned with the job
    site.add_job(2, "echo never")
    result = site.run()
    assert result.returncode == ExitCode.NO_SPACE == 69, result.stderr
    assert "pilot stops: no space left" in result.stderr or "MB free" in result.stderr
    assert site.final(1)["pilot_error_code"] == ErrorCode.NO_LOCAL_SPACE
    assert (site.jobs / "2.json").exists(), "no job is taken without the space for it"


def test_no_job_is_taken_without_the_space_the_queue_asks_for(site_on_small_disk: Site) -> None:
    site = site_on_small_disk
    site.queue_settings["min_free_disk"] = 8  # MB: more than the whole disk
    site.add_job(1, "echo never")
    result = site.run()
    assert result.returncode == ExitCode.NO_SPACE, result.stderr
    assert "a job needs 8 MB" in result.stderr
    assert (site.jobs / "1.json").exists() and site.history(1) == []


# The job dir, read-only from here on. Making the bind mount read-only fails with EBUSY while a file is open
# for writing through it (the pilot saving its journal at that instant): tried again, a bounded number of times.
READ_ONLY_JOB_DIR = ("mount --bind .. .. && for try in $(seq 200); do "
                     "mount -o remount,bind,ro .. 2>/dev/null && break; sleep 0.05; done; "
                     "touch ../probe 2>/dev/null; test ! -e ../probe")


def test_a_job_dir_turned_read_only_mid_job_is_in_the_failure_diagnostic(site_on_small_disk: Site) -> None:
    """The payload succeeds, then the job dir turns read-only (a read-only mount over it): the journal can no
    longer be saved, nor the log tarball made; the failure's diagnostic says both, the pilot log says why."""
    site = site_on_small_disk
    site.queue_settings["identity"] = "none"  # the payload (root) mounts in the pilot's own mount namespace
    site.add_job(1, f"echo fine > out.dat; {READ_ONLY_JOB_DIR}", outputs=("out.dat",))
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr
    final = site.final(1)
    assert (final["job_status"], final["pilot_error_code"]) == ("failed", ErrorCode.LOGFILE_CREATION), final
    diag = final["pilot_error_diag"]
    assert "log tarball" in diag and "journal not saved" in diag and "Read-only file system" in diag, diag
    assert "journalUnsaved=" in final["job_metrics"]
    assert "journal not saved" in result.stderr and "ERROR" in result.stderr


def test_a_finished_job_whose_journal_could_not_be_saved_stays_finished_and_says_so(
        site_on_small_disk: Site) -> None:
    """The payload succeeds and leaves the journal impossible to replace (a mount over it): the job's outputs
    and log are in storage, so it is reported finished (code 0), with the journal's failure in its diagnostic,
    its metrics and the pilot log (at WARNING, with the reason)."""
    site = site_on_small_disk
    site.queue_settings["identity"] = "none"  # the payload (root) mounts in the pilot's own mount namespace
    site.add_job(1, "echo fine > one.dat; mount --bind ../journal.json ../journal.json", outputs=("one.dat",))
    site.add_job(2, "echo next > two.dat", outputs=("two.dat",))
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr
    final = site.final(1)
    assert (final["job_status"], final["pilot_error_code"]) == ("finished", 0)
    assert final["pilot_error_diag"].startswith("journal not saved "), final
    assert "Device or resource busy" in final["pilot_error_diag"]
    assert "journalUnsaved=" in final["job_metrics"]
    assert (site.outputs / "1.log.tgz").exists() and (site.outputs / "one.dat").read_text() == "fine\n"
    warning = [line for line in result.stderr.splitlines() if "WARNING" in line and "journal not saved" in line]
    assert warning and "Device or resource busy" in warning[0], result.stderr
    assert "journal not saved" in final["pilot_log"]  # the job log's tail, as the server keeps it
    assert site.final(2)["job_status"] == "finished" and "pilot_error_diag" not in site.final(2)
