"""The factory's wrapper (launch/pilot-wrapper.sh) around the real bundle: bundle choice and version tag,
the work dir, signals forwarded to the pilot, a pilot with a stale log ended, exit codes, clean-up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pilot.errors import ErrorCode
from tests.e2e.conftest import QUEUE, Site, pids_alive, read_pids, stop_pilot
from tests.launch.conftest import WRAPPER


def pilot_options(site: Site) -> list[str]:
    return ["--queue", QUEUE, "--dispatcher", str(site.jobs), "--queue-config", str(site.write_queue()),
            "--max-no-job", "1", "--no-job-wait", "0.05", "--max-failures", "0"]


def wrapper_argv(site: Site, bundle: Path, *options: str) -> list[str]:
    base = site.root / "base"
    base.mkdir(exist_ok=True)
    return [str(WRAPPER), "--bundle", str(bundle), "--python", sys.executable, "--workdir-base", str(base),
            *options, "--", *pilot_options(site)]


def run_wrapper(site: Site, bundle: Path, *options: str, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess:
    return subprocess.run(wrapper_argv(site, bundle, *options), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_the_production_bundle_runs_jobs_and_the_work_dir_is_removed(site: Site, bundle: Path) -> None:
    site.add_job(41, "echo one")
    site.add_job(42, "echo two")
    result = run_wrapper(site, bundle, env={"PANDA_BATCH_ID": "4242"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"running {bundle} (PR)" in result.stdout
    assert "pilot exits with code 0" in result.stdout, "the pilot's log is in the wrapper's output"
    for panda_id in (41, 42):
        final = site.final(panda_id)
        assert final["job_status"] == "finished"
        assert final["pilot_id"].endswith("|PR|0.1.0")
        assert {h["batch_id"] for h in site.history(panda_id)} == {"4242"}, "the batch id in every update"
    assert list((site.root / "base").iterdir()) == []


def test_no_job_is_not_a_failed_batch_job(site: Site, bundle: Path) -> None:
    result = run_wrapper(site, bundle, "--keep-workdir")
    assert result.returncode == 0
    assert "the pilot exited with code 82" in result.stdout
    kept = list((site.root / "base").glob("pandapilot.*/pilot.log"))
    assert len(kept) == 1 and "no job" in kept[0].read_text()


@pytest.mark.parametrize(("options", "tag"), [
    (("--rc-share", "100"), "RC"),
    (("--rc-share", "100", "--rc-tag", "ALRB"), "ALRB"),
    (("--rc-share", "0"), "PR"),
    (("--test-pilot",), "PT"),
])  # fmt: skip
def test_the_bundle_and_version_tag_chosen(site: Site, bundle: Path, options: tuple[str, ...], tag: str) -> None:
    candidate = shutil.copy(bundle, site.root / "candidate.pyz")
    development = shutil.copy(bundle, site.root / "development.pyz")
    site.add_job(43, "true")
    result = run_wrapper(site, bundle, "--rc-bundle", str(candidate), "--dev-bundle", str(development), *options)
    assert result.returncode == 0, result.stdout[-3000:]
    chosen = {"RC": candidate, "ALRB": candidate, "PR": bundle, "PT": development}[tag]
    assert f"running {chosen} ({tag})" in result.stdout
    assert site.final(43)["pilot_id"].endswith(f"|{tag}|0.1.0")


def test_wrapper_failures_have_their_own_codes(site: Site, bundle: Path) -> None:
    assert run_wrapper(site, site.root / "absent.pyz").returncode == 90
    assert run_wrapper(site, bundle, "--test-pilot").returncode == 90, "a test pilot without a development bundle"
    assert run_wrapper(site, bundle, "--python", "/bin/false").returncode == 90
    assert run_wrapper(site, bundle, "--workdir-base", str(site.root / "absent" / "dir")).returncode == 91


@pytest.mark.parametrize(("signum", "code"), [
    (signal.SIGTERM, ErrorCode.SIGTERM), (signal.SIGINT, ErrorCode.SIGINT), (signal.SIGUSR1, ErrorCode.SIGUSR1),
])  # fmt: skip
def test_signals_reach_the_pilot(site: Site, bundle: Path, signum: int, code: int) -> None:
    pidfile = site.root / "payload.pid"
    site.add_job(44, f"echo $$ > {pidfile}; sleep 600")
    proc = subprocess.Popen(wrapper_argv(site, bundle), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        payload = read_pids(pidfile, 1, timeout=60)[0]
        site.wait_state(44, "running", timeout=120)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=90)
    finally:
        stop_pilot(proc)
    assert proc.returncode == 128 + signum, out[-3000:]
    assert f"SIG{signal.Signals(signum).name[3:]}: forwarding it to the pilot" in out
    final = site.final_or_none(44)
    assert (final.get("job_status"), final.get("pilot_error_code")) == ("failed", code), out[-3000:]
    assert pids_alive([payload]) == []


def test_a_pilot_whose_log_stopped_changing_is_ended(site: Site, bundle: Path) -> None:
    site.add_job(45, "sleep 600")
    result = run_wrapper(site, bundle, "--stale-log", "3", "--kill-grace", "30")
    assert result.returncode == 92, result.stdout[-3000:]
    assert "the pilot's log has not changed for 3 s" in result.stdout
    assert site.final(45)["pilot_error_code"] == ErrorCode.SIGTERM


def test_a_batch_system_signalling_every_process_ends_the_job_1201(site: Site) -> None:
    """scancel and condor_rm signal the payload and the pilot alike: the payload may die first, and its
    pilot may see that before its own signal arrives."""
    pidfile = site.root / "payload.pid"
    site.add_job(46, f"echo $$ > {pidfile}; exec sleep 600")
    proc = site.start()
    try:
        payload = read_pids(pidfile, 1, timeout=60)[0]
        site.wait_state(46, "running")
        os.kill(payload, signal.SIGTERM)
        assert proc.stdout is not None
        for line in proc.stdout:  # the pilot has seen its payload end: now its own signal comes
            if "payload ended with exit code 143" in line:
                break
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        stop_pilot(proc)
    assert site.final(46)["pilot_error_code"] == ErrorCode.SIGTERM
