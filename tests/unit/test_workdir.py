"""The pilot's own files in a job's work dir are never written or read through a name the payload planted."""

from __future__ import annotations

import logging
import os
import tarfile

from pilot.layout import JobDir
from pilot.report import job_log, make_log_tarball, read_job_report, tail


def planted(tmp_path):
    dirs = JobDir(tmp_path / "job")
    dirs.payload.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("SECRET\n")
    return dirs, victim


def test_the_job_log_is_not_appended_through_a_planted_link(tmp_path):
    dirs, victim = planted(tmp_path)
    dirs.pilot_log.symlink_to(victim)  # what a same-uid payload left for a resumed job
    with job_log(dirs.root):
        logging.getLogger("pilot.test").error("a line for the job log")
    assert victim.read_text() == "SECRET\n"


def test_payload_files_that_are_links_or_devices_are_not_read(tmp_path):
    dirs, victim = planted(tmp_path)
    dirs.stdout.symlink_to("/dev/zero")
    dirs.stderr.symlink_to(victim)
    dirs.job_report.symlink_to(victim)
    assert tail(dirs.stdout, 2048) == "" and tail(dirs.stderr, 2048) == ""
    assert read_job_report(dirs.job_report) is None
    os.mkfifo(dirs.payload / "fifo")
    assert tail(dirs.payload / "fifo", 100) == "", "a FIFO does not block the pilot"


def test_the_log_tarball_replaces_a_planted_link_and_packs_no_link(tmp_path):
    dirs, victim = planted(tmp_path)
    (dirs.root / "1.log.tgz").symlink_to(victim)
    dirs.stdout.write_text("payload output\n")
    dirs.stderr.symlink_to(victim)
    dirs.journal.write_text("{}")
    tarball = make_log_tarball(dirs, "1.log.tgz")
    assert victim.read_text() == "SECRET\n" and not tarball.is_symlink()
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"1.log/payload.stdout", "1.log/journal.json"}
        assert all(m.isfile() for m in members.values())
        assert tar.extractfile("1.log/payload.stdout").read() == b"payload output\n"
