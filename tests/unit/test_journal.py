"""The job journal: durable, atomically rewritten, and read back by recovery."""

from __future__ import annotations

import json
import logging
import os

import pytest

from pilot import fsutil
from pilot.journal import STEPS, Journal
from pilot.layout import JOB_DEFINITION, JOURNAL_FILES
from pilot.layout import JOURNAL as JOURNAL_NAME

RAW = {"PandaID": "7", "attemptNr": "1", "transformation": "run.sh"}


@pytest.fixture
def journal(tmp_path):
    return Journal.create(tmp_path, 7, 1, "SITE_A", "node01", RAW)


def on_disk(tmp_path) -> dict:
    """The journal as a reader sees it; also checks that nothing but the journal, the job's definition
    (and the file events) is in the directory."""
    assert set(os.listdir(tmp_path)) - {JOURNAL_FILES} == {JOB_DEFINITION, JOURNAL_NAME}, "temporary files left behind"
    return json.loads((tmp_path / JOURNAL_NAME).read_text())


def test_create_writes_the_journal(journal, tmp_path):
    data = on_disk(tmp_path)
    assert journal.path == tmp_path / JOURNAL_NAME
    assert data["panda_id"] == 7 and data["attempt_nr"] == 1
    assert data["site"] == "SITE_A" and data["node"] == "node01"
    assert "job" not in data and data["definition"] == JOB_DEFINITION
    assert json.loads((tmp_path / JOB_DEFINITION).read_text()) == RAW
    assert data["step"] == "created"
    assert "created" in data["steps"]
    assert data["version"] == 2
    assert "path" not in data


def test_every_step_leaves_valid_json_and_no_temp_file(journal, tmp_path):
    journal.reach("staged_in")
    assert on_disk(tmp_path)["step"] == "staged_in"
    journal.file_done("in", "a.root", fsize=3, checksum="ad:00000001", location="/w/a.root")
    assert Journal.load(tmp_path / JOURNAL_NAME).file_info("in", "a.root")["fsize"] == 3
    journal.reported("running")
    assert on_disk(tmp_path)["files"]["in:a.root"]["fsize"] == 3  # the snapshot, with the next save
    assert on_disk(tmp_path)["state"] == "running"
    journal.owe_final({"job_status": "finished"})
    assert on_disk(tmp_path)["final"] == {"job_status": "finished"}
    journal.owe_final(None)
    assert on_disk(tmp_path)["final"] is None
    journal.reach("reported")
    assert on_disk(tmp_path)["step"] == "reported"


def test_load_round_trip(journal, tmp_path):
    journal.reach("staged_in")
    journal.file_done("in", "a.root", fsize=3, checksum="ad:00000001", location="/w/a.root")
    journal.file_done("out", "b.root", fsize=9, checksum="", location="file:///se/b.root", guid="g")
    journal.reported("transferring")
    journal.owe_final({"job_status": "failed", "pilot_error_code": 1165})
    journal.recovery_attempts = 2
    journal.save()

    loaded = Journal.load(tmp_path / JOURNAL_NAME)
    assert loaded == journal
    assert loaded.file_info("in", "a.root") == {"status": "done", "fsize": 3, "checksum": "ad:00000001",
                                                "location": "/w/a.root"}
    assert loaded.file_info("out", "b.root")["guid"] == "g"
    assert loaded.file_info("in", "b.root") is None  # direction matters
    assert loaded.final == {"job_status": "failed", "pilot_error_code": 1165}
    assert loaded.recovery_attempts == 2
    assert loaded.has_reached("staged_in") and not loaded.has_reached("payload_done")


def test_the_definition_is_written_once_not_at_every_step(tmp_path, monkeypatch):
    written = []
    real = fsutil.atomic_write_json

    def counted(path, obj):
        written.append(path.name)
        real(path, obj)

    monkeypatch.setattr("pilot.journal.atomic_write_json", counted)
    big = {**RAW, "jobPars": "x" * 1_000_000}
    journal = Journal.create(tmp_path, 7, 1, "SITE_A", "node01", big)
    for step in STEPS[1:]:
        journal.reach(step)
    assert written.count(JOB_DEFINITION) == 1 and written.count(JOURNAL_NAME) == len(STEPS)
    assert (tmp_path / JOURNAL_NAME).stat().st_size < 2000
    assert Journal.load(tmp_path / JOURNAL_NAME).job == big


def test_a_journal_that_holds_its_definition_still_loads(tmp_path):
    old = {"version": 1, "panda_id": 7, "attempt_nr": 1, "site": "S", "node": "n", "job": RAW, "step": "staged_in",
           "state": "running", "steps": {}, "files": {}, "final": None, "recovery_attempts": 0, "updated": 1.0}
    (tmp_path / JOURNAL_NAME).write_text(json.dumps(old))
    loaded = Journal.load(tmp_path / JOURNAL_NAME)
    assert loaded.job == RAW and loaded.step == "staged_in"


@pytest.mark.parametrize("text", ["[" * 100_000, "[1]", "{broken"])
def test_a_broken_journal_is_a_value_error(tmp_path, text):
    (tmp_path / JOURNAL_NAME).write_text(text)
    with pytest.raises(ValueError):
        Journal.load(tmp_path / JOURNAL_NAME)


def test_failed_saves_are_counted_for_the_report(journal, monkeypatch):
    def full(src, dst):
        raise OSError(28, "No space left")

    monkeypatch.setattr(fsutil.os, "replace", full)
    assert journal.save() is False and journal.save() is False
    monkeypatch.undo()
    assert journal.save() is True
    assert (journal.save_failures, journal.save_error) == (2, "No space left")


def test_a_file_event_that_cannot_be_written_is_counted_and_logged(journal, caplog):
    journal.events_path.mkdir()  # the append cannot open it: EISDIR
    with caplog.at_level(logging.ERROR, logger="pilot.journal"):
        journal.file_done("out", "a.root", fsize=1)
    assert journal.save_failures == 1 and journal.save_error == os.strerror(21)
    assert f"journal file event out:a.root not saved: {os.strerror(21)}" in caplog.text
    assert journal.file_info("out", "a.root") is not None  # this pilot still knows it


def test_file_info_only_for_finished_files(journal):
    journal.files["in:partial.root"] = {"status": "started"}
    assert journal.file_info("in", "partial.root") is None
    assert journal.file_info("in", "never.root") is None


def test_has_reached_follows_the_step_order(journal):
    for index, step in enumerate(STEPS):
        journal.reach(step)
        assert [journal.has_reached(s) for s in STEPS] == [i <= index for i in range(len(STEPS))]


def test_reach_records_each_step_time(journal):
    journal.reach("staged_in")
    journal.reach("payload_done")
    assert set(journal.steps) == {"created", "staged_in", "payload_done"}
    assert journal.steps["created"] <= journal.steps["staged_in"] <= journal.steps["payload_done"]


def test_unknown_step_is_rejected_and_nothing_changes(journal, tmp_path):
    before = on_disk(tmp_path)
    with pytest.raises(ValueError, match="unknown journal step"):
        journal.reach("teleported")
    assert journal.step == "created"
    assert on_disk(tmp_path) == before


def test_has_reached_unknown_step_is_an_error(journal):
    with pytest.raises(ValueError):
        journal.has_reached("teleported")


def test_failed_rename_keeps_the_previous_journal_and_no_temp_file(journal, tmp_path, monkeypatch):
    journal.reach("staged_in")
    before = on_disk(tmp_path)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", broken_replace)
    journal.reach("payload_done")  # a full disk must not take the job down: logged, not raised
    assert journal.save() is False
    monkeypatch.undo()
    assert on_disk(tmp_path) == before
    assert journal.save() is True
    assert on_disk(tmp_path)["step"] == "payload_done"


def test_concurrent_changes_never_break_a_save(journal):
    import threading

    def beat() -> None:
        for _ in range(200):
            journal.reported("running")

    thread = threading.Thread(target=beat)
    thread.start()
    for n in range(200):
        journal.file_done("out", f"f{n}.root", fsize=n)
    thread.join()
    assert len(Journal.load(journal.path).files) == 200


def test_atomic_write_json_replaces_whole_file(tmp_path):
    target = tmp_path / "x.json"
    fsutil.atomic_write_json(target, {"long": "y" * 10_000})
    fsutil.atomic_write_json(target, {"short": 1})
    assert json.loads(target.read_text()) == {"short": 1}
    assert os.listdir(tmp_path) == ["x.json"]
    assert target.stat().st_mode & 0o777 == 0o644


# --- file events -------------------------------------------------------------------------------------
def test_a_file_event_appends_one_line_and_rewrites_nothing(journal, tmp_path):
    before = (tmp_path / JOURNAL_NAME).read_bytes()
    for n in range(3):
        journal.file_done("out", f"f{n}.root", fsize=n, location=f"/se/f{n}.root")
    assert (tmp_path / JOURNAL_NAME).read_bytes() == before
    lines = (tmp_path / JOURNAL_FILES).read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["out:f0.root", "out:f1.root", "out:f2.root"]


def test_a_torn_last_event_is_ignored_and_the_rest_survives(journal, tmp_path):
    journal.file_done("out", "a.root", fsize=1)
    journal.file_done("out", "b.root", fsize=2)
    events = tmp_path / JOURNAL_FILES
    events.write_bytes(events.read_bytes()[:-7])  # a crash in the middle of the second append
    loaded = Journal.load(tmp_path / JOURNAL_NAME)
    assert loaded.file_info("out", "a.root")["fsize"] == 1
    assert loaded.file_info("out", "b.root") is None


def test_the_event_file_is_never_followed_through_a_link(journal, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_text("not the pilot's\n")
    (tmp_path / JOURNAL_FILES).symlink_to(outside)
    journal.file_done("out", "a.root", fsize=1)  # logged, not raised, not written through the link
    assert outside.read_text() == "not the pilot's\n"
    assert Journal.load(tmp_path / JOURNAL_NAME).file_info("out", "a.root") is None


def test_events_folded_over_an_older_snapshot(journal, tmp_path):
    journal.file_done("in", "a.root", fsize=1, location="/w/a.root")
    journal.save()  # the snapshot has a.root
    journal.file_done("out", "b.root", fsize=2, location="/se/b.root")
    loaded = Journal.load(tmp_path / JOURNAL_NAME)
    assert set(loaded.files) == {"in:a.root", "out:b.root"}
