"""The pilot's command line run as a subprocess over several jobs on a local site."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zlib

import pytest

from pilot.errors import ErrorCode, ExitCode
from tests.e2e.conftest import Site, pids_alive, read_pids, wait_for


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def test_several_jobs_move_files_and_report_each_step(site: Site) -> None:
    a = site.put_input("a.dat", b"alpha" * 1000)
    b = site.put_input("b.dat", b"beta" * 300_000)
    site.add_job(11, "cat a.dat b.dat > ab.dat && echo joined", (a, b), ("ab.dat",))
    site.add_job(12, "cp a.dat copy.dat && echo '{\"exitCode\": 0, \"nEvents\": 7}' > jobReport.json", (a,),
                 ("copy.dat",))
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr

    for panda_id in (11, 12):
        assert site.states(panda_id) == ["starting", "running", "finished"]
    final = site.final(11)
    assert final["pilot_error_code"] == 0 and final["trans_exit_code"] == 0
    joined = (site.se / "out" / "scope" / "ab.dat").read_bytes()
    assert joined == b"alpha" * 1000 + b"beta" * 300_000
    report = final["job_output_report"]
    assert report["ab.dat"]["fsize"] == len(joined)
    assert report["ab.dat"]["adler32"] == adler(joined)
    assert report["ab.dat"]["surl"].endswith("/out/scope/ab.dat")
    log = report["11.log.tgz"]
    assert log["guid"] == "log-11"
    with tarfile.open(site.se / "out" / "scope" / "11.log.tgz") as tar:
        names = tar.getnames()
    assert "11.log/pilot.log" in names and "11.log/payload.stdout" in names
    assert final["stdout"] == "joined\n"
    assert final["pilot_timing"].count("|") == 4
    assert "bytesIn=" in final["job_metrics"]
    # the payload's job report travels as metaData, its event count as nEvents
    second = site.final(12)
    assert json.loads(second["meta_data"])["nEvents"] == 7 and second["n_events"] == 7
    # work dirs are removed once the final report is delivered
    assert not list(site.work.glob("PanDA_Pilot-*"))


def test_payload_failure_ships_the_log_but_no_outputs(site: Site) -> None:
    site.add_job(21, "echo partial > out.dat; echo 'fatal: bad input' >&2; exit 3", outputs=("out.dat",))
    result = site.run()
    assert result.returncode == ExitCode.OK
    final = site.final(21)
    assert final["job_status"] == "failed"
    assert final["trans_exit_code"] == 3
    assert final["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED
    assert "fatal: bad input" in final["pilot_error_diag"]
    assert list(final["job_output_report"]) == ["21.log.tgz"]
    assert not (site.se / "out" / "scope" / "out.dat").exists()


def test_missing_and_empty_outputs_fail_the_job(site: Site) -> None:
    site.add_job(22, "true", outputs=("never.dat",))
    site.add_job(23, ": > empty.dat", outputs=("empty.dat",))
    site.run()
    assert site.final(22)["pilot_error_code"] == ErrorCode.MISSING_OUTPUT
    assert site.final(23)["pilot_error_code"] == ErrorCode.EMPTY_OUTPUT


def test_input_with_wrong_checksum_is_not_run(site: Site) -> None:
    good = site.put_input("c.dat", b"content")
    bad = dict(good, checksum="ad:00000001")
    site.add_job(24, "touch ran.flag", (bad,))
    site.run()
    final = site.final(24)
    assert final["pilot_error_code"] == ErrorCode.GET_ADLER32_MISMATCH
    assert "running" not in site.states(24)


def test_looping_job_is_killed_with_its_whole_tree(site: Site, tmp_path) -> None:
    site.queue_settings.update(looping_limit_min=1, looping_check_interval=0.2)
    pidfile = tmp_path / "loop.pids"
    # the payload starts a child and a grandchild that leaves the session (setsid): all must die
    script = f"sleep 300 & echo $! >> {pidfile}; setsid sleep 301 & echo $! >> {pidfile}; echo $$ >> {pidfile}; wait"
    site.add_job(31, script, maxCpuCount="1")
    result = site.run("--heartbeat", "0.2")  # heartbeats rewrite the journal: no sign of the payload's life
    assert result.returncode == ExitCode.OK
    final = site.final(31)
    assert final["pilot_error_code"] == ErrorCode.LOOPING
    assert final["trans_exit_code"] == 128 + signal.SIGTERM
    pids = read_pids(pidfile, 3)
    assert pids_alive(pids) == []


def test_memory_hog_is_killed(site: Site) -> None:
    site.queue_settings.update(memory_check_interval=0.2, memory_grace=1.0)
    touch_pages = "b = bytearray(300 * 2**20); b[::4096] = b\"x\" * len(b[::4096])"
    hog = f"{sys.executable} -c 'import time; {touch_pages}; time.sleep(120)'"
    site.add_job(41, hog, minRamCount="100")
    site.run()
    final = site.final(41)
    assert final["pilot_error_code"] == ErrorCode.OUT_OF_MEMORY, final.get("pilot_error_diag")
    assert final["max_pss"] > 100 * 1024


def test_server_kill_command_stops_the_payload(site: Site, started, tmp_path) -> None:
    pidfile = tmp_path / "kill.pids"
    site.add_job(51, f"echo $$ > {pidfile}; sleep 300")
    proc = site.start("--heartbeat", "0.3")
    started.append(proc)
    pid = read_pids(pidfile, 1)[0]
    (site.jobs / "commands" / "51").write_text("tobekilled\n")
    assert proc.wait(timeout=60) == ExitCode.OK
    final = site.final(51)
    assert final["pilot_error_code"] == ErrorCode.KILLED_BY_SERVER
    assert pids_alive([pid]) == []


def test_softkill_finishes_the_job_and_takes_no_more(site: Site, started, tmp_path) -> None:
    flag = tmp_path / "go"
    site.add_job(52, f"while [ ! -e {flag} ]; do sleep 0.05; done")
    site.add_job(53, "true")
    proc = site.start("--heartbeat", "0.2")
    started.append(proc)
    site.wait_state(52, "running")
    (site.jobs / "commands" / "52").write_text("softkill")  # only a heartbeat can carry it now
    seen = len(site.history(52))
    wait_for(lambda: len(site.history(52)) > seen, 30, "a heartbeat after the softkill")
    flag.touch()
    assert proc.wait(timeout=60) == ExitCode.OK
    assert site.final(52)["job_status"] == "finished"
    assert (site.jobs / "53.json").exists(), "a soft-killed pilot must not take another job"


def test_sigterm_to_the_pilot_fails_the_job_1201_and_leaves_no_payload(site: Site, started, tmp_path) -> None:
    pidfile = tmp_path / "term.pids"
    # a well-hidden payload: a double-forked daemon in its own session, plus a child ignoring SIGTERM
    script = (f"(setsid sh -c 'echo $$ >> {pidfile}; exec sleep 302' &) ; "
              f"sh -c 'trap \"\" TERM; echo $$ >> {pidfile}; while :; do sleep 1; done' & "
              f"echo $$ >> {pidfile}; wait")
    site.add_job(61, script, outputs=("never.dat",))
    site.add_job(62, "true")
    site.queue_settings["kill_grace"] = 1
    proc = site.start()
    started.append(proc)
    pids = read_pids(pidfile, 3)
    site.wait_state(61, "running")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    final = site.final(61)
    assert final["job_status"] == "failed"
    assert final["pilot_error_code"] == ErrorCode.SIGTERM
    assert "61.log.tgz" in final["job_output_report"], "the log is shipped before the pilot exits"
    assert pids_alive(pids) == []
    assert (site.jobs / "62.json").exists(), "no new job after a signal"


def test_leftover_background_processes_are_killed_after_a_successful_payload(site: Site, tmp_path) -> None:
    pidfile = tmp_path / "bg.pids"
    site.add_job(71, f"(setsid sleep 303 & echo $! >> {pidfile}) ; nohup sleep 304 >/dev/null 2>&1 & "
                     f"echo $! >> {pidfile}; echo ok")
    site.run()
    assert site.final(71)["job_status"] == "finished"
    assert pids_alive(read_pids(pidfile, 2)) == []


def test_malformed_and_hostile_definitions_are_reported_and_the_pilot_goes_on(site: Site) -> None:
    site.add_job(81, outputs=("../../etc/passwd",))
    site.add_job(82, outputs=("a/b.dat",))
    site.add_job(83, outputs=("bad\u0000name",))
    site.add_job(84, outputs=("tab\tname",))
    site.add_job(85, inFiles="x.dat,y.dat", fsize="1", checksum="NULL", scopeIn="s,s", GUID="g1,g2")
    site.add_job(86, inFiles="x.dat", fsize="lots", scopeIn="s", GUID="g")
    site.add_job(87, inFiles="x.dat", fsize="5", checksum="sha1:abc", scopeIn="s", GUID="g")
    site.add_job(88, transformation="NULL")
    site.add_job(93, outputs=("journal.json",))
    site.add_job(94, inFiles="tmp", fsize="1", checksum="NULL", scopeIn="s", GUID="g")
    site.add_job(95, outputs=("x.dat",), scopeOut="../../up")
    site.add_job(96, PandaID="\u00b2")
    site.add_raw("89.json", json.dumps({"jobPars": "no id at all"}))
    site.add_raw("90.json", "{not json")
    os.utime(site.jobs / "90.json", (time.time() - 60, time.time() - 60))  # not still being written
    site.add_raw("91.json", "[1, 2, 3]")
    site.add_job(92, "echo fine")
    result = site.run("--max-no-job", "3")  # a file that does not parse is tried three times
    assert result.returncode == ExitCode.OK
    assert "Traceback" not in result.stderr
    expected = {
        81: ErrorCode.BAD_FILE_NAME, 82: ErrorCode.BAD_FILE_NAME, 83: ErrorCode.BAD_FILE_NAME,
        84: ErrorCode.BAD_FILE_NAME, 85: ErrorCode.NOT_SAME_LENGTH, 86: ErrorCode.CONVERSION_FAILURE,
        87: ErrorCode.UNKNOWN_CHECKSUM_TYPE, 88: ErrorCode.NOT_DEFINED, 93: ErrorCode.BAD_FILE_NAME,
        94: ErrorCode.BAD_FILE_NAME, 95: ErrorCode.BAD_FILE_NAME,
    }
    for panda_id, code in expected.items():
        final = site.final(panda_id)
        assert (final["job_status"], final["pilot_error_code"]) == ("failed", code), panda_id
        assert final["pilot_error_diag"] and "\n" not in final["pilot_error_diag"]
        assert site.states(panda_id) == ["failed"], "a broken job is never started"
    rejected = sorted(p.name for p in (site.jobs / "rejected").glob("*.reason"))
    assert "90.json.reason" in rejected and "91.json.reason" in rejected
    assert any(name.startswith("unidentified-") for name in rejected)
    assert site.final(92)["job_status"] == "finished"
    assert not (site.root / "etc").exists() and not (site.se / "etc").exists()


def test_factory_push_file_is_run(site: Site) -> None:
    job = site.add_job(101, "echo pushed")
    (site.jobs / "101.json").unlink()
    (site.jobs / "pandaJobData.out").write_text(json.dumps({"101": job}))
    assert site.run().returncode == ExitCode.OK
    assert site.final(101)["job_status"] == "finished"


def test_stop_rules_max_jobs_and_no_jobs(site: Site) -> None:
    site.add_job(111, "true")
    site.add_job(112, "true")
    assert site.run("--max-jobs", "1").returncode == ExitCode.OK
    assert (site.jobs / "112.json").exists()
    assert site.run().returncode == ExitCode.OK
    assert site.run().returncode == ExitCode.NO_JOBS


def test_failed_jobs_in_a_row_stop_the_pilot(site: Site) -> None:
    for panda_id in (121, 122, 123):
        site.add_job(panda_id, "exit 1")
    result = site.run("--max-failures", "2")
    assert result.returncode == ExitCode.OK
    assert (site.jobs / "123.json").exists()
    assert "2 failed jobs in a row" in result.stderr


def test_two_pilots_on_one_directory_never_run_the_same_job(site: Site, started) -> None:
    for panda_id in range(131, 141):
        site.add_job(panda_id, "sleep 0.1")
    procs = [site.start(), site.start("--workdir", str(site.root / "work2"))]
    started.extend(procs)
    for proc in procs:
        assert proc.wait(timeout=120) == ExitCode.OK
    for panda_id in range(131, 141):
        assert site.states(panda_id) == ["starting", "running", "finished"], panda_id


def test_unknown_copytool_and_bad_queue_config(site: Site) -> None:
    site.queue_settings["copytool"] = "nosuchmover"
    site.add_job(141, "true")
    site.run()
    assert site.final(141)["pilot_error_code"] == ErrorCode.UNKNOWN_COPYTOOL
    site.queue_settings["kill_grace"] = "soon"
    result = site.run()
    assert result.returncode == ExitCode.GENERAL
    assert "kill_grace" in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_and_prints_a_table(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "pilot", "demo", "--dir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line[:5].strip().isdigit()}
    assert lines["1001"][1] == "finished"
    assert lines["1003"][1:3] == ["failed", str(int(ErrorCode.PAYLOAD_FAILED))]
    assert lines["1004"][1:3] == ["failed", str(int(ErrorCode.LOOPING))]
    assert lines["1005"][1:3] == ["failed", str(int(ErrorCode.BAD_FILE_NAME))]


@pytest.mark.parametrize("signum, code", [
    (signal.SIGINT, ErrorCode.SIGINT), (signal.SIGQUIT, ErrorCode.SIGQUIT), (signal.SIGUSR1, ErrorCode.SIGUSR1),
    (signal.SIGXCPU, ErrorCode.SIGXCPU), (signal.SIGBUS, ErrorCode.SIGBUS),
])
def test_each_pilot_signal_has_its_code_and_exit_status(site: Site, started, tmp_path, signum, code) -> None:
    pidfile = tmp_path / "sig.pids"
    site.add_job(151, f"echo $$ > {pidfile}; sleep 300")
    proc = site.start()
    started.append(proc)
    pid = read_pids(pidfile, 1)[0]
    site.wait_state(151, "running")
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    assert site.final(151)["pilot_error_code"] == code
    assert pids_alive([pid]) == []


def test_lifetime_stops_the_payload_before_the_pilot_ends(site: Site) -> None:
    site.queue_settings.update(time_margin=1)
    site.add_job(161, "sleep 300")
    site.add_job(162, "true")
    result = site.run("--lifetime", "3")
    assert result.returncode == ExitCode.OK
    assert site.final(161)["pilot_error_code"] == ErrorCode.REACHED_MAX_TIME
    assert (site.jobs / "162.json").exists(), "no new job without lifetime left"


def test_stdout_and_work_dir_limits(site: Site) -> None:
    site.queue_settings.update(max_stdout=1, stdout_check_interval=0.2, disk_check_interval=0.2)
    site.add_job(171, "head -c 3000000 /dev/zero; sleep 300")
    site.add_job(172, "head -c 3000000 /dev/zero > big.dat; sleep 300", maxDiskCount="2")
    site.run()
    assert site.final(171)["pilot_error_code"] == ErrorCode.STDOUT_TOO_BIG
    assert site.final(172)["pilot_error_code"] == ErrorCode.WORKDIR_TOO_LARGE


@pytest.mark.parametrize("storage", ["path", "file-url", "rewritten-url"])
def test_odd_but_legal_names_stay_names(site: Site, storage: str) -> None:
    if storage == "file-url":
        site.queue_settings["se"] = f"file://{site.se}"
    elif storage == "rewritten-url":
        site.queue_settings.update(se="root://se.example:1094//store", copyprefix=f"root://se.example:1094//store^{site.se}")
    names = ("a#x", "a#y", "..%2F..%2Fescaped", "q?x=1", "100%.dat", "a b%41.dat")
    site.add_job(181, "; ".join(f"echo {i} > '{n}'" for i, n in enumerate(names)), outputs=names)
    site.run()
    final = site.final(181)
    assert final["job_status"] == "finished", final.get("pilot_error_diag")
    stored = sorted(p.name for p in (site.se / "out" / "scope").iterdir())
    assert stored == sorted([*names, "181.log.tgz"])
    for i, name in enumerate(names):
        assert (site.se / "out" / "scope" / name).read_text() == f"{i}\n"
    assert not (site.root / "escaped").exists() and not (site.se / "escaped").exists()
