"""The embedded dispatcher's directory under attack or breaking, end to end: the pilot never hangs,
never dies with a traceback, and tells 'another pilot took it' from 'my directory is gone'."""

from __future__ import annotations

import json
import os

from pilot.errors import ExitCode
from tests.e2e.conftest import Site


def test_fifo_job_file_deep_json_and_unreadable_commands_do_not_stop_the_pilot(site: Site) -> None:
    os.mkfifo(site.jobs / "1.json")  # opened with a blocking open, this would hang the pilot for ever
    os.symlink("/dev/zero", site.jobs / "2.json")  # read without a bound, this would never end
    site.add_raw("3.json", json.dumps({"PandaID": "3", "transformation": "/bin/true", "x": {}})[:-4]
                 + "[" * 100_000 + "]" * 100_000 + "}")
    os.utime(site.jobs / "3.json", (1, 1))
    site.add_job(4, "echo ok")
    os.mkfifo(site.jobs / "commands" / "4")  # an operator command file nobody can read
    site.add_job(5, "echo ok")
    (site.jobs / "commands" / "5").write_bytes(b"\xff\xfe not UTF-8")
    result = site.run("--max-no-job", "3", timeout=120)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr
    reasons = {p.name: p.read_text() for p in (site.jobs / "rejected").glob("*.reason")}
    assert "not a regular file" in reasons["1.json.reason"] and "symbolic link" in reasons["2.json.reason"]
    assert "deeper than" in reasons["3.json.reason"]
    assert site.final(4)["job_status"] == site.final(5)["job_status"] == "finished"
    assert "operator command file" in result.stderr


def test_claimed_dir_removed_while_running_stops_the_pilot_with_a_reason(site: Site) -> None:
    site.add_job(1, f"rm -rf {site.jobs / 'claimed'}")
    site.add_job(2, "echo never")
    result = site.run()
    assert result.returncode == ExitCode.SERVER_COMMUNICATION, result.stderr
    assert f"job directory {site.jobs / 'claimed'} is gone" in result.stderr
    assert "Traceback" not in result.stderr
    assert site.final(1)["job_status"] == "finished"
    assert (site.jobs / "2.json").exists(), "not skipped as if another pilot had taken it"


def test_history_that_cannot_be_written_is_a_dispatcher_failure_not_a_traceback(site: Site) -> None:
    (site.jobs / "history" / "1.jsonl").mkdir()
    site.add_job(1, "echo ok")
    site.add_job(2, "echo never")
    result = site.run()
    assert result.returncode == ExitCode.SERVER_COMMUNICATION, result.stderr
    assert "cannot write the job's history" in result.stderr and "Traceback" not in result.stderr
    journals = list(site.work.glob("PanDA_Pilot-1-*/journal.json"))
    assert journals and json.loads(journals[0].read_text())["final"] is not None, "the report stays owed"
