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
