"""LocalDispatcher: a directory of job files, push files, history and operator commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from pilot.dispatcher.base import Command, DispatcherError, JobRequest, JobUpdate
from pilot.dispatcher.local import PUSH_FILE, LocalDispatcher, parse_push_file

REQUEST = JobRequest(site_name="Q", node="node01")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path):
    return tmp_path / "jobs"


@pytest.fixture
def dispatcher(root):
    return LocalDispatcher(root)


def put_job(root, name: str, panda_id, **fields) -> None:
    (root / name).write_text(json.dumps({"PandaID": panda_id, "transformation": "run.sh", **fields}))


def rejected(root) -> list[str]:
    return sorted(p.name for p in (root / "rejected").iterdir())


def test_creates_its_layout(dispatcher, root):
    assert all((root / sub).is_dir() for sub in ("claimed", "rejected", "history", "commands"))


def test_none_when_empty(dispatcher):
    assert dispatcher.get_job(REQUEST) is None


def test_claims_in_numeric_then_name_order(dispatcher, root):
    for number in (10, 9, 100):
        put_job(root, f"{number}.json", number)
    put_job(root, "a.json", 1)
    put_job(root, "b.json", 2)
    order = [dispatcher.get_job(REQUEST)["PandaID"] for _ in range(5)]
    assert order == ["9", "1", "2", "10", "100"]  # 9.json, a.json, b.json, 10.json, 100.json
    assert dispatcher.get_job(REQUEST) is None


def test_claimed_file_moves_to_claimed(dispatcher, root):
    put_job(root, "5.json", 5)
    dispatcher.get_job(REQUEST)
    assert not (root / "5.json").exists()
    assert (root / "claimed" / "5.json").exists()


def test_values_become_strings_and_null(dispatcher, root):
    put_job(root, "5.json", 5, attemptNr=2, coreCount=None, maxRSS=1.5)
    job = dispatcher.get_job(REQUEST)
    assert job == {"PandaID": "5", "transformation": "run.sh", "attemptNr": "2", "coreCount": "NULL",
                   "maxRSS": "1.5"}


def test_two_dispatchers_never_get_the_same_job(root):
    first, second = LocalDispatcher(root), LocalDispatcher(root)
    put_job(root, "1.json", 1)
    put_job(root, "2.json", 2)
    got = [first.get_job(REQUEST), second.get_job(REQUEST), first.get_job(REQUEST), second.get_job(REQUEST)]
    assert [j["PandaID"] if j else None for j in got] == ["1", "2", None, None]


def test_file_claimed_by_another_pilot_after_our_listing_is_skipped(dispatcher, root):
    """Both list 1.json and 2.json; the other pilot wins 1.json: we skip it silently and take 2.json."""
    put_job(root, "1.json", 1)
    put_job(root, "2.json", 2)
    other = LocalDispatcher(root)
    assert other.get_job(REQUEST)["PandaID"] == "1"  # the other lists both and claims 1.json
    assert dispatcher.get_job(REQUEST)["PandaID"] == "2"
    assert other.get_job(REQUEST) is None and dispatcher.get_job(REQUEST) is None


def test_a_file_added_after_the_listing_is_found_when_the_queue_runs_dry(dispatcher, root):
    put_job(root, "1.json", 1)
    assert dispatcher.get_job(REQUEST)["PandaID"] == "1"
    put_job(root, "7.json", 7)
    assert dispatcher.get_job(REQUEST)["PandaID"] == "7"


def settle(path) -> None:
    """Make a file look last written a minute ago (the dispatcher's settle time is 10 s)."""
    old = time.time() - 60
    os.utime(path, (old, old))


@pytest.mark.parametrize("content, fragment", [
    (b"{not json", "not a JSON job definition"),
    (b"\xff\xfe\x00garbage", "not a JSON job definition"),
    (b"[" * 100_000, "deeper than"),
    (b'{"PandaID": ' * 100_000, "deeper than"),
])
def test_garbage_is_tried_again_then_rejected_with_a_reason(dispatcher, root, content, fragment):
    (root / "1.json").write_bytes(content)
    settle(root / "1.json")
    put_job(root, "2.json", 2)
    assert dispatcher.get_job(REQUEST)["PandaID"] == "2"  # 1.json failed once: left for later
    assert (root / "1.json").exists() and rejected(root) == []
    assert dispatcher.get_job(REQUEST) is None  # second failure
    assert dispatcher.get_job(REQUEST) is None  # third: rejected
    assert rejected(root) == ["1.json", "1.json.reason"]
    assert (root / "rejected" / "1.json").read_bytes() == content
    reason = (root / "rejected" / "1.json.reason").read_text()
    assert fragment in reason and reason.count("\n") == 1
    assert not (root / "claimed" / "1.json").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"[1, 2, 3]", "not list"),
    (b'"just a string"', "not str"),
    (b"42", "not int"),
])
def test_json_that_is_not_an_object_is_rejected_at_once(dispatcher, root, content, fragment):
    (root / "1.json").write_bytes(content)
    put_job(root, "2.json", 2)
    assert dispatcher.get_job(REQUEST)["PandaID"] == "2"
    assert rejected(root) == ["1.json", "1.json.reason"]
    assert fragment in (root / "rejected" / "1.json.reason").read_text()


def test_a_job_file_still_being_written_is_not_taken_and_not_rejected(dispatcher, root):
    """Written in place (not written then renamed): a half file is left alone until it is whole."""
    whole = json.dumps({"PandaID": 3, "transformation": "run.sh"}).encode()
    with open(root / "3.json", "wb") as writer:
        writer.write(whole[:10])
        writer.flush()
        for _ in range(5):  # recent, so never rejected however often it is tried
            assert dispatcher.get_job(REQUEST) is None
        assert rejected(root) == []
        writer.write(whole[10:])
    assert dispatcher.get_job(REQUEST)["PandaID"] == "3"


def test_a_file_that_changes_between_tries_starts_counting_again(dispatcher, root):
    path = root / "4.json"
    path.write_bytes(b"{")
    settle(path)
    assert dispatcher.get_job(REQUEST) is None
    assert dispatcher.get_job(REQUEST) is None
    path.write_bytes(b'{"Pan')  # grew: still coming
    settle(path)
    assert dispatcher.get_job(REQUEST) is None
    assert dispatcher.get_job(REQUEST) is None
    assert rejected(root) == []
    assert dispatcher.get_job(REQUEST) is None
    assert rejected(root) == ["4.json", "4.json.reason"]


@pytest.mark.parametrize("make, fragment", [
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: os.symlink("/dev/zero", p), "symbolic link"),
    (lambda p: p.mkdir(), "not a regular file"),
])
def test_fifo_link_or_directory_is_rejected_without_blocking_or_reading(dispatcher, root, make, fragment):
    make(root / "1.json")
    put_job(root, "2.json", 2)
    assert dispatcher.get_job(REQUEST)["PandaID"] == "2"
    assert rejected(root) == ["1.json", "1.json.reason"]
    assert fragment in (root / "rejected" / "1.json.reason").read_text()


def test_a_job_file_larger_than_the_cap_is_rejected(dispatcher, root, monkeypatch):
    monkeypatch.setattr("pilot.dispatcher.local.MAX_JOB_FILE", 100)
    put_job(root, "1.json", 1, jobPars="x" * 200)
    assert dispatcher.get_job(REQUEST) is None
    assert "larger than 100 bytes" in (root / "rejected" / "1.json.reason").read_text()


@pytest.mark.parametrize("gone", ["claimed", "."])
def test_our_directory_gone_is_a_dispatcher_failure_not_another_pilot(dispatcher, root, gone):
    put_job(root, "1.json", 1)
    put_job(root, "2.json", 2)
    assert dispatcher.get_job(REQUEST)["PandaID"] == "1"
    shutil.rmtree(root / gone)
    with pytest.raises(DispatcherError, match="is gone"):
        dispatcher.get_job(REQUEST)


# Each pilot its own interpreter (as on a node): a child forked from this threaded test process could inherit
# a lock another thread held, and hang on it.
DRAIN = """\
import json, sys
from pilot.dispatcher.base import JobRequest
from pilot.dispatcher.local import LocalDispatcher
dispatcher, request, got = LocalDispatcher(sys.argv[1]), JobRequest(site_name="Q", node="node01"), []
while (job := dispatcher.get_job(request)) is not None:
    got.append(int(job["PandaID"]))
print(json.dumps(got))
"""


def test_eight_pilots_claim_each_of_many_jobs_exactly_once(root):
    LocalDispatcher(root)
    for number in range(1, 1601):
        put_job(root, f"{number}.json", number)
    pilots = [subprocess.Popen([sys.executable, "-c", DRAIN, str(root)], stdout=subprocess.PIPE, text=True,
                               cwd=REPO) for _ in range(8)]
    claimed = [json.loads(pilot.communicate(timeout=240)[0]) for pilot in pilots]
    everything = [panda_id for one in claimed for panda_id in one]
    assert sorted(everything) == list(range(1, 1601))
    assert sorted(int(p.stem) for p in (root / "claimed").iterdir()) == list(range(1, 1601))


def test_reject_keeps_an_unidentified_definition(dispatcher, root):
    dispatcher.reject({"transformation": "x"}, "job definition has no valid PandaID")
    names = rejected(root)
    assert len(names) == 2 and names[0].startswith("unidentified-") and names[1] == names[0] + ".reason"
    assert json.loads((root / "rejected" / names[0]).read_text()) == {"transformation": "x"}
    assert "no valid PandaID" in (root / "rejected" / names[1]).read_text()


# --- push files -------------------------------------------------------------------------------------
def test_push_file_json_with_two_jobs(dispatcher, root):
    jobs = {"11": {"PandaID": 11, "transformation": "a"}, "12": {"PandaID": 12, "transformation": "b"}}
    (root / PUSH_FILE).write_text(json.dumps(jobs))
    got = [dispatcher.get_job(REQUEST), dispatcher.get_job(REQUEST)]
    assert sorted((j["PandaID"], j["transformation"]) for j in got) == [("11", "a"), ("12", "b")]
    assert dispatcher.get_job(REQUEST) is None
    assert not (root / PUSH_FILE).exists()


def test_push_file_urlencoded(dispatcher, root):
    (root / PUSH_FILE).write_text(urlencode({"PandaID": "77", "jobPars": "-a 1 --b=c&d", "GUID": ""}))
    job = dispatcher.get_job(REQUEST)
    assert job == {"PandaID": "77", "jobPars": "-a 1 --b=c&d", "GUID": ""}


def test_unreadable_push_file_is_rejected(dispatcher, root):
    (root / PUSH_FILE).write_text("{broken")
    assert dispatcher.get_job(REQUEST) is None
    names = rejected(root)
    assert len(names) == 2 and names[0].startswith(PUSH_FILE) and names[1].endswith(".reason")


def test_parse_push_file_forms():
    assert parse_push_file('{"PandaID": 5, "x": "y"}') == [{"PandaID": 5, "x": "y"}]
    assert parse_push_file('{"5": {"PandaID": 5}, "6": {"PandaID": 6}}') == [{"PandaID": 5}, {"PandaID": 6}]
    assert parse_push_file("PandaID=5&x=a%20b&y=") == [{"PandaID": "5", "x": "a b", "y": ""}]


# --- reports and commands ---------------------------------------------------------------------------
def update(job_id: int, status: str, attempt: int = 1, **kw) -> JobUpdate:
    return JobUpdate(job_id=job_id, job_status=status, attempt_nr=attempt, **kw)


def test_history_gets_one_line_per_update(dispatcher, root):
    assert dispatcher.update_job(update(5, "starting", node="node01")) is Command.NONE
    dispatcher.update_job(update(5, "running", extra={"coreCount": 8}))
    dispatcher.update_job(update(5, "finished", pilot_error_code=0))
    lines = (root / "history" / "5.jsonl").read_text().splitlines()
    assert len(lines) == 3
    history = dispatcher.history(5)
    assert [h["job_status"] for h in history] == ["starting", "running", "finished"]
    assert history[0]["node"] == "node01" and "pilot_error_code" not in history[0]
    assert history[1]["coreCount"] == 8
    assert history[2]["pilot_error_code"] == 0
    assert all(h["job_id"] == 5 and "time" in h for h in history)


def test_history_of_unknown_job_is_empty(dispatcher):
    assert dispatcher.history(999) == []


@pytest.mark.parametrize("text, command", [
    ("", Command.KILL),
    ("\n", Command.KILL),
    ("tobekilled", Command.KILL),
    ("softkill\n", Command.SOFTKILL),
    ("SOFTKILL", Command.SOFTKILL),
    ("debug", Command.DEBUG),
    ("nonsense", Command.NONE),
])
def test_operator_command_is_returned_by_update(dispatcher, root, text, command):
    (root / "commands" / "5").write_text(text)
    assert dispatcher.update_job(update(5, "running")) is command
    assert dispatcher.update_job(update(6, "running")) is Command.NONE  # only for that job


def test_job_status_from_the_last_history_line(dispatcher, root):
    assert dispatcher.job_status(5).status == "unknown"
    dispatcher.update_job(update(5, "running", attempt=3))
    dispatcher.update_job(update(5, "holding", attempt=3))
    (root / "commands" / "5").write_text("softkill")
    status = dispatcher.job_status(5)
    assert (status.job_id, status.status, status.attempt_nr, status.command) == (5, "holding", 3, Command.SOFTKILL)


def test_a_claimed_job_whose_heartbeat_is_lost_is_failed_and_offered_again(tmp_path):
    jobs = LocalDispatcher(tmp_path, lost_heartbeat=60)
    (tmp_path / "8.json").write_text(json.dumps({"PandaID": "8", "attemptNr": "1", "maxAttempt": "2"}))
    first = jobs.get_job(REQUEST)
    assert first["attemptNr"] == "1"
    jobs.update_job(JobUpdate(job_id=8, job_status="running", attempt_nr=1))
    assert jobs.retry_lost(now=time.time() + 5) == [], "not lost yet"
    assert jobs.retry_lost(now=time.time() + 120) == [8]
    assert jobs.history(8)[-1]["job_status"] == "failed" and "lost heartbeat" in jobs.history(8)[-1][
        "job_dispatcher_error_diag"]
    again = jobs.get_job(REQUEST)
    assert again["attemptNr"] == "2" and jobs.job_status(8).attempt_nr == 1
    assert jobs.retry_lost(now=time.time() + 120) == [8], "the second attempt is lost too"
    assert jobs.get_job(REQUEST) is None, "no attempts left"
    assert jobs.retry_lost(now=time.time() + 999) == [], "each attempt is failed once"


def test_a_finished_job_is_never_lost(tmp_path):
    jobs = LocalDispatcher(tmp_path, lost_heartbeat=60)
    (tmp_path / "9.json").write_text(json.dumps({"PandaID": "9"}))
    jobs.get_job(REQUEST)
    jobs.update_job(JobUpdate(job_id=9, job_status="finished", attempt_nr=1))
    assert jobs.retry_lost(now=time.time() + 10_000) == []


@pytest.mark.parametrize("make", [
    lambda p: os.mkfifo(p),
    lambda p: os.symlink("/dev/zero", p),
    lambda p: p.write_text('{"1": ' * 100_000),
])
def test_hostile_push_file_is_rejected_and_jobs_still_served(dispatcher, root, make):
    make(root / PUSH_FILE)
    put_job(root, "2.json", 2)
    assert dispatcher.get_job(REQUEST)["PandaID"] == "2"
    names = rejected(root)
    assert len(names) == 2 and names[0].startswith(PUSH_FILE) and names[1].endswith(".reason")


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(b"\xff\xfekill"),  # not UTF-8
    lambda p: p.mkdir(),
    lambda p: os.mkfifo(p),
    lambda p: os.symlink("/dev/zero", p),
    lambda p: p.write_bytes(b"tobekilled" * 1000),  # larger than a command can be
])
def test_unreadable_operator_command_is_logged_and_ignored(dispatcher, root, make, caplog):
    make(root / "commands" / "5")
    assert dispatcher.update_job(update(5, "running")) is Command.NONE
    assert dispatcher.update_job(update(5, "running")) is Command.NONE
    warnings = [r for r in caplog.records if "command file" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


@pytest.mark.parametrize("breakage", ["history is a directory", "history dir gone"])
def test_history_write_failure_is_a_dispatcher_failure_with_one_line(dispatcher, root, breakage):
    if breakage == "history is a directory":
        (root / "history" / "5.jsonl").mkdir()
    else:
        shutil.rmtree(root / "history")
    with pytest.raises(DispatcherError) as caught:
        dispatcher.update_job(update(5, "running"))
    assert "cannot write the job's history" in caught.value.diag and "\n" not in caught.value.diag
    assert "Traceback" not in caught.value.diag


def test_history_skips_lines_that_are_not_json_objects(dispatcher, root):
    dispatcher.update_job(update(5, "running"))
    with open(root / "history" / "5.jsonl", "a") as handle:
        handle.write("[" * 100_000 + "\n" + "garbage\n")
    dispatcher.update_job(update(5, "failed"))
    assert [h["job_status"] for h in dispatcher.history(5)] == ["running", "failed"]


def test_cache_aware_choice_prefers_the_job_with_most_input_bytes_cached(dispatcher, root):
    put_job(root, "1.json", 1, inFiles="a.root,b.root", scopeIn="mc16,mc16", fsize="100,100")
    put_job(root, "2.json", 2, inFiles="c.root,d.root", scopeIn="mc16,mc16", fsize="5000,300")
    put_job(root, "3.json", 3, inFiles="c.root", scopeIn="data18", fsize="9999")  # same name, other scope
    (root / "4.json").write_text("not json")  # unreadable: keeps its place, rejected when its turn comes
    cached = {"v": 1, "count": 2, "bytes": 5100, "files": ["mc16:a.root", "mc16:c.root"]}
    asking = JobRequest(site_name="Q", node="node07", cached_files=cached)
    assert dispatcher.get_job(asking)["PandaID"] == "2"  # 5000 bytes cached, against 100
    assert dispatcher.get_job(asking)["PandaID"] == "1"
    assert dispatcher.get_job(REQUEST)["PandaID"] == "3"  # no report: the usual order
    lines = (root / "history" / "brokerage.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["PandaID"], r["cached_input_bytes"], r["node"]) for r in records] == [
        (2, 5000, "node07"), (1, 100, "node07")]
    assert dispatcher.history(2) == []  # the job's own history stays what a server would have received


def test_cache_aware_choice_with_a_digest(dispatcher, root):
    from pilot.cachereport import build

    put_job(root, "1.json", 1, inFiles="x.root", scopeIn="s", fsize="10")
    put_job(root, "2.json", 2, inFiles="y.root", scopeIn="s", fsize="10")
    digest = build([("s", "y.root", 10), *(("s", f"other{i}", 1) for i in range(50))], max_names=5)
    assert "bloom" in digest
    assert dispatcher.get_job(JobRequest(site_name="Q", node="n", cached_files=digest))["PandaID"] == "2"
