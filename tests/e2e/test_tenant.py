"""The payload as an untrusted tenant: every probe, run through the pilot's command line, in same-uid mode
(`none`) and in switched modes (`uid` with setpriv, `glexec` through the glexec stand-in, `uid` inside a
bubblewrap sandbox). Switched modes need root (test accounts are made here and removed after).

One pilot run per mode takes all the probe jobs; each test below asserts one probe on that run."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from pilot.errors import ErrorCode, ExitCode
from pilot.proctrack import cgroup_parent
from tests.accounts import account_name, make_proxy
from tests.e2e.conftest import Site, pids_alive, stop_pilot, wait_for

ROOT = os.geteuid() == 0
STANDIN = Path(__file__).resolve().parents[1] / "standins" / "glexec"
# Test accounts, named after this test session (several may run on one machine at once).
ONE, TWO = account_name("a"), account_name("b")
USERS = (ONE, TWO)
DN = {ONE: "/DC=org/DC=pandapilot-test/CN=Tenant One", TWO: "/DC=org/DC=pandapilot-test/CN=Tenant Two"}
UNMAPPED_DN = "/DC=org/DC=elsewhere/CN=Nobody Known"
MODES = ["none", "uid", "glexec", "bwrap", "sandbox"]  # bwrap: uid in a sandbox; sandbox: same uid in one
SWITCHED = ["uid", "glexec", "bwrap"]
SECRETS = {"PANDA_AUTH_TOKEN": "pilot-token-s3cret", "OIDC_AUTH_TOKEN": "pilot-oidc-s3cret"}


def _needs(mode: str) -> None:
    if mode != "none" and not ROOT:
        pytest.skip("switched modes need root (test accounts, setpriv)")
    if mode in ("bwrap", "sandbox") and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (.ci/provision-tenant.sh installs it)")


# --- proxies (the accounts: the session fixture `accounts` of tests/conftest.py) ---------------------


@pytest.fixture(scope="session")
def proxies() -> dict[str, str]:
    return {**{user: make_proxy(dn) for user, dn in DN.items()}, "unmapped": make_proxy(UNMAPPED_DN),
            "expired": make_proxy(DN[ONE], expired=True)}


# --- one site per mode ------------------------------------------------------------------------------
@dataclass
class TenantSite:
    mode: str
    site: Site
    env: dict[str, str]
    pilot_proxy: Path
    proxies: dict[str, str]

    @property
    def switched(self) -> bool:
        return self.mode not in ("none", "sandbox")

    @property
    def isolated(self) -> bool:
        """The pilot's files are out of the payload's reach (another account, or hidden by a sandbox)."""
        return self.mode != "none"

    def job(self, panda_id: int, script: str, outputs: tuple[str, ...] = (), user: str = ONE,
            **extra: Any) -> None:
        if self.switched:
            extra.setdefault("userProxy", self.proxies[user])
            extra.setdefault("prodUserID", DN.get(user, UNMAPPED_DN))
        extra.setdefault("prodSourceLabel", "user")
        script = "; ".join(line for line in script.strip().splitlines())  # jobPars carry one line
        self.site.add_job(panda_id, script, outputs=outputs, **extra)

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(self.site.argv(*extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=self.site.root, env=self.env)

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.site.argv(), capture_output=True, text=True, timeout=600, cwd=self.site.root,
                              env=self.env)

    def output(self, name: str) -> str:
        return (self.site.se / "out" / "scope" / name).read_text()

    def final(self, panda_id: int) -> dict[str, Any]:
        return self.site.final(panda_id)


def make_site(mode: str, root: Path, proxies: dict[str, str]) -> TenantSite:
    os.chmod(root, 0o755)  # the payload's account must reach its part of the work dir
    pilot_proxy = root / "pilot-x509up"
    pilot_proxy.write_text("PILOT PROXY SECRET\n")
    pilot_proxy.chmod(0o600)
    token = root / "pilot-token"
    token.write_text("PILOT BEARER SECRET\n")
    token.chmod(0o600)
    env = {**os.environ, **SECRETS, "X509_USER_PROXY": str(pilot_proxy), "BEARER_TOKEN_FILE": str(token)}
    env.pop("GLEXEC_LOCATION", None)
    settings: dict[str, Any] = {"sepath": "out", "looping_limit_min": 1, "looping_check_interval": 0.5,
                                "memory_grace": 1, "memory_check_interval": 0.5, "kill_grace": 2}
    mapfile = root / "grid-mapfile"
    mapfile.write_text("".join(f'"{dn}" {user}\n' for user, dn in DN.items()))
    if mode in ("uid", "bwrap"):
        settings.update(identity="uid", grid_mapfile=str(mapfile))
    if mode in ("bwrap", "sandbox"):
        settings["sandbox"] = "bubblewrap"
    if mode == "glexec":
        (root / "glexec" / "sbin").mkdir(parents=True)
        (root / "glexec" / "etc").mkdir()
        shutil.copy2(STANDIN, root / "glexec" / "sbin" / "glexec")
        shutil.copy2(mapfile, root / "glexec" / "etc" / "grid-mapfile")
        env["GLEXEC_LOCATION"] = str(root / "glexec")
        settings["identity"] = "glexec"
    return TenantSite(mode, Site(root, settings), env, pilot_proxy, proxies)


@pytest.fixture
def open_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pandapilot-tenant-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


# The probe payloads: each prints the PIDs it starts on its stdout (the final report's `stdout`).
PROBE = """id -u > uid-{id}.txt
if grep -q SECRET {proxy} 2>/dev/null; then echo readable; else echo denied; fi > proxy-{id}.txt
J=../journal.json
if [ -w $J ] && echo tampered >> $J; then echo writable; else echo denied; fi > journal-{id}.txt
env > env-{id}.txt
"""
SYMLINK_OUTPUT = "ln -s {proxy} out-{id}.dat"
HARDLINK_OUTPUT = "ln {proxy} out-{id}.dat 2>/dev/null || echo 'no hard link to it' > out-{id}.dat"
HOSTILE_NAMES = """echo before
ln -s {victim} ../{id}.log.tgz 2>/dev/null
rm -f payload.stdout && ln -s /dev/zero payload.stdout
rm -f payload.stderr && ln -s {proxy} payload.stderr
ln -s {proxy} jobReport.json
rm -f ../pilot.log 2>/dev/null && ln -s {proxy} ../pilot.log
exit 3
"""
TREE = "echo $$; (setsid sleep 300 & echo $!); setsid sh -c 'sleep 300 & echo $!; sleep 300' & sleep 1; "
LOOPING = TREE + "sleep 300"
MEMORY = TREE + "exec python3 -c 'import time; x = bytearray(300 * 2**20); time.sleep(300)'"


@dataclass
class Run:
    t: TenantSite
    result: subprocess.CompletedProcess
    victim: Path


@pytest.fixture(scope="module", params=MODES)
def run(request, accounts, proxies, tmp_path_factory) -> Iterator[Run]:
    mode = request.param
    _needs(mode)
    root = Path(tempfile.mkdtemp(prefix=f"pandapilot-tenant-{mode}-"))
    releases = release_tree()
    try:
        t = make_site(mode, root, proxies)
        t.site.queue_settings["appdir"] = str(releases)
        victim = root / "victim"
        victim.write_text("untouched\n")
        fmt = {"proxy": t.pilot_proxy, "victim": victim}
        t.job(1, PROBE.format(id=1, **fmt), tuple(f"{n}-1.txt" for n in ("uid", "proxy", "journal", "env")))
        t.job(2, SYMLINK_OUTPUT.format(id=2, **fmt), ("out-2.dat",))
        t.job(3, HARDLINK_OUTPUT.format(id=3, **fmt), ("out-3.dat",))
        t.job(4, HOSTILE_NAMES.format(id=4, **fmt))
        t.job(5, LOOPING, maxCpuCount=1)
        t.job(6, MEMORY, minRamCount=60)
        if t.switched:
            t.job(7, "id -u > uid-7.txt", ("uid-7.txt",), user=TWO)
            t.job(8, "echo ran > ran-8.txt", ("ran-8.txt",), user="unmapped")
            t.job(9, "echo ran > ran-9.txt", ("ran-9.txt",), user="expired")
        t.job(11, "echo ran > ran-11.txt; exit 200", ("ran-11.txt",))  # the wrapper's refusal code, its own
        t.job(10, 'echo "$RELEASE_MARK $(id -u)" > release-10.txt', ("release-10.txt",), swRelease="21.0.15",
              cmtConfig="x86_64-el9-gcc13-opt")
        result = t.run()
        yield Run(t, result, victim)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(releases, ignore_errors=True)


def release_tree() -> Path:
    """A release the payload's account can read, outside /tmp (which a sandbox replaces): its setup
    exports a mark the payload reports (pilot/release.py runs it through the launcher)."""
    root = Path(tempfile.mkdtemp(prefix="pandapilot-releases-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    release = root / "x86_64-el9-gcc13-opt" / "21.0.15"
    release.mkdir(parents=True)
    (release / "setup.sh").write_text("export RELEASE_MARK=in-release-$1\n")
    return root


def _pids(stdout: str) -> list[int]:
    return [int(word) for word in stdout.split() if word.isdigit()]


def _account_processes(name: str) -> list[tuple[int, str]]:
    """Live processes of a test account (a zombie left to init to collect runs nothing)."""
    uid = pwd.getpwnam(name).pw_uid
    return [(p.pid, p.info["name"]) for p in psutil.process_iter(["uids", "name", "status"])
            if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE]


def _job_processes(root: Path) -> list[tuple[int, str]]:
    """Live processes of any payload of the site at `root` (their environment names its work dir)."""
    found = []
    for p in psutil.process_iter(["status", "name"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and \
                    p.environ().get("PILOT_JOB_REPORT", "").startswith(f"{root}/"):
                found.append((p.pid, p.info["name"]))
        except psutil.Error:
            pass
    return found


# --- the probes ------------------------------------------------------------------------------------
def test_pilot_runs_all_probe_jobs(run: Run) -> None:
    assert run.result.returncode == ExitCode.OK, run.result.stdout + run.result.stderr


def test_payload_runs_as_the_mapped_account(run: Run, accounts) -> None:
    assert run.t.final(1)["job_status"] == "finished", run.t.final(1)
    expected = accounts[ONE].pw_uid if run.t.switched else os.geteuid()
    assert int(run.t.output("uid-1.txt")) == expected


def test_a_release_job_runs_in_its_release_through_the_launcher(run: Run, accounts) -> None:
    """The release wrapper is the command each launcher wraps: its setup runs as the payload's account."""
    assert run.t.final(10)["job_status"] == "finished", run.t.final(10)
    mark, uid = run.t.output("release-10.txt").split()
    assert mark == "in-release-21.0.15"
    assert int(uid) == (accounts[ONE].pw_uid if run.t.switched else os.geteuid())


def test_two_jobs_of_two_users_run_each_under_its_own_account(run: Run, accounts) -> None:
    if not run.t.switched:
        pytest.skip("same-uid mode has one account")
    assert int(run.t.output("uid-1.txt")) == accounts[ONE].pw_uid
    assert int(run.t.output("uid-7.txt")) == accounts[TWO].pw_uid


def test_pilot_proxy_unreadable_and_journal_unwritable(run: Run) -> None:
    if not run.t.isolated:
        pytest.skip("same-uid mode without a sandbox: the payload is the pilot's account")
    assert run.t.output("proxy-1.txt").strip() == "denied"
    assert run.t.output("journal-1.txt").strip() == "denied"


def test_no_pilot_secret_in_the_payload_environment(run: Run) -> None:
    env = dict(line.split("=", 1) for line in run.t.output("env-1.txt").splitlines() if "=" in line)
    for secret in SECRETS.values():
        assert secret not in env.values()
    assert "BEARER_TOKEN_FILE" not in env and "LD_PRELOAD" not in env
    assert env.get("X509_USER_PROXY", "") != str(run.t.pilot_proxy)
    if run.t.switched:
        assert env["USER"] == env["LOGNAME"] == ONE and env["HOME"] == f"/home/{ONE}"
        assert env["X509_USER_PROXY"].endswith("/cred/x509up"), "the user's own proxy, in its own dir"


def test_symlinked_output_fails_and_is_not_shipped(run: Run) -> None:
    final = run.t.final(2)
    assert final["pilot_error_code"] == ErrorCode.MISSING_OUTPUT and "symbolic link" in final["pilot_error_diag"]
    assert not (run.t.site.se / "out" / "scope" / "out-2.dat").exists()


def test_hard_linked_output_is_not_shipped_with_the_pilot_proxy(run: Run) -> None:
    final = run.t.final(3)
    shipped = run.t.site.se / "out" / "scope" / "out-3.dat"
    if run.t.isolated:  # no hard link to a file the account cannot read, nor to one the sandbox hides
        assert final["job_status"] == "finished" and shipped.read_text() == "no hard link to it\n"
    else:
        assert final["pilot_error_code"] == ErrorCode.MISSING_OUTPUT and "hard link" in final["pilot_error_diag"]
        assert not shipped.exists()


def test_planted_names_are_never_followed(run: Run) -> None:
    final = run.t.final(4)
    assert final["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED and final["trans_exit_code"] == 3
    assert run.victim.read_text() == "untouched\n", "the tarball went through a planted link"
    assert "PILOT PROXY" not in json.dumps(final), "a linked stderr, jobReport or pilot.log was read"
    assert "meta_data" not in final
    log = run.t.site.se / "out" / "scope" / "4.log.tgz"
    assert log.is_file() and not log.is_symlink(), "the log tarball is shipped all the same"


def test_looping_kill_ends_all_payload_processes(run: Run) -> None:
    final = run.t.final(5)
    assert final["pilot_error_code"] == ErrorCode.LOOPING, final
    if run.t.mode == "none":
        assert len(_pids(final.get("stdout", ""))) == 3 and not pids_alive(_pids(final["stdout"]))


def test_memory_kill_ends_all_payload_processes(run: Run) -> None:
    final = run.t.final(6)
    assert final["pilot_error_code"] == ErrorCode.OUT_OF_MEMORY, final
    if run.t.mode == "none":
        assert len(_pids(final.get("stdout", ""))) == 3 and not pids_alive(_pids(final["stdout"]))


def test_unmapped_dn_fails_the_job_and_runs_nothing(run: Run) -> None:
    if not run.t.switched:
        pytest.skip("same-uid mode maps no DN")
    final = run.t.final(8)
    assert final["pilot_error_code"] == ErrorCode.GLEXEC and "DN" in final["pilot_error_diag"]
    assert not (run.t.site.se / "out" / "scope" / "ran-8.txt").exists()


def test_expired_user_proxy_fails_the_job_and_runs_nothing(run: Run) -> None:
    if not run.t.switched:
        pytest.skip("same-uid mode takes no user proxy")
    final = run.t.final(9)
    assert final["pilot_error_code"] == ErrorCode.NO_PROXY and "expired" in final["pilot_error_diag"]
    assert not (run.t.site.se / "out" / "scope" / "ran-9.txt").exists()


def test_a_payload_exiting_with_the_wrappers_refusal_code_is_a_payload_failure(run: Run) -> None:
    final = run.t.final(11)
    assert final["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED and final["trans_exit_code"] == 200, final
    assert "code 200" in final["pilot_error_diag"]


def test_a_switch_that_does_not_happen_is_refused_by_the_wrapper(accounts, proxies, open_root) -> None:
    """A uid_command that runs the wrapper as the pilot's account (it does not switch): the wrapper
    refuses, the job fails with the identity code, and the payload never runs."""
    _needs("uid")
    t = make_site("uid", open_root, proxies)
    t.site.queue_settings["uid_command"] = "env PANDA_WOULD_BE={user}"
    marker = open_root / "ran-as-the-pilot"
    t.job(40, f"touch {marker}; exit 200")
    result = t.run()
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    final = t.final(40)
    assert final["pilot_error_code"] == ErrorCode.GLEXEC and "did not run" in final["pilot_error_diag"], \
        (final["pilot_error_diag"], result.stderr[-3000:])
    assert not marker.exists()


# The user proxy from the queue's retrieval command: the job brings none; the command picks by the DN.
FAILS_DN, EXPIRED_DN = "/DC=org/DC=pandapilot-test/CN=Retrieval Fails", "/DC=org/DC=pandapilot-test/CN=Stale"
RETRIEVAL = """case "$PANDA_USER_DN" in
    "{one}") cat {store}/one.pem ;;
    "{stale}") cat {store}/expired.pem ;;
    *) echo "no credential for $PANDA_USER_DN" >&2; exit 3 ;;
esac
"""
PROXY_PROBE = """P=$X509_USER_PROXY; R=got-{id}.txt; echo "uid $(id -u)" > $R
echo "mine $(stat -c '%a %u' $P) dir $(stat -c '%a %u' $(dirname $P))" >> $R
echo "pilot copy dir $(stat -c '%a %u' ../proxy)" >> $R
if cat ../proxy/x509up > /dev/null 2>&1; then echo pilot copy readable; else echo pilot copy denied; fi >> $R
if grep -q SECRET {pilot_proxy} 2>/dev/null; then echo pilot proxy readable; else echo pilot proxy denied; fi >> $R
openssl x509 -in $P -noout -subject -nameopt compat >> $R
"""


def test_the_user_proxy_from_the_retrieval_command_is_the_payloads_alone(accounts, proxies, open_root) -> None:
    """uid mode with `user_proxy_command`: the proxy it prints is kept 0600 in a 0700 dir of the pilot's,
    the payload's account gets its own 0600 copy (and cannot read the pilot's proxy nor the pilot's copy),
    both are gone after the job; a failing command, or an expired proxy, fails the job with 1163 before the
    payload runs."""
    _needs("uid")
    t = make_site("uid", open_root, proxies)
    store = open_root / "store"
    store.mkdir(mode=0o700)
    (store / "one.pem").write_text(proxies[ONE])
    (store / "expired.pem").write_text(proxies["expired"])
    script = store / "retrieve.sh"
    script.write_text(RETRIEVAL.format(one=DN[ONE], stale=EXPIRED_DN, store=store))
    t.site.queue_settings["user_proxy_command"] = f"/bin/sh {script}"
    t.site.add_job(50, "; ".join(PROXY_PROBE.format(id=50, pilot_proxy=t.pilot_proxy).splitlines()),
                   outputs=("got-50.txt",), prodSourceLabel="user", prodUserID=DN[ONE])
    for panda_id, dn in ((51, FAILS_DN), (52, EXPIRED_DN)):
        t.site.add_job(panda_id, f"echo ran > ran-{panda_id}.txt", outputs=(f"ran-{panda_id}.txt",),
                       prodSourceLabel="user", prodUserID=dn)
    result = subprocess.run(t.site.argv("--keep-workdirs"), capture_output=True, text=True, timeout=600,
                            cwd=t.site.root, env=t.env)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert t.final(50)["job_status"] == "finished", t.final(50)
    uid = accounts[ONE].pw_uid
    got = t.output("got-50.txt").splitlines()
    assert got[:5] == [f"uid {uid}", f"mine 600 {uid} dir 700 {uid}", f"pilot copy dir 700 {os.geteuid()}",
                       "pilot copy denied", "pilot proxy denied"], got
    assert DN[ONE] in got[5], "the payload reads the user's proxy the command printed"
    for panda_id, diag in ((51, "exited with code 3"), (52, "expired")):
        final = t.final(panda_id)
        assert final["pilot_error_code"] == ErrorCode.NO_PROXY and diag in final["pilot_error_diag"], final
        assert not (t.site.se / "out" / "scope" / f"ran-{panda_id}.txt").exists()
        assert not list(t.site.work.glob(f"PanDA_Pilot-{panda_id}-*/work/ran-{panda_id}.txt")), "the payload ran"
    kept = list(t.site.work.glob("PanDA_Pilot-*"))
    assert len(kept) == 3, "the job dirs are kept (--keep-workdirs)"
    for job_dir in kept:
        assert not (job_dir / "proxy").exists() and not (job_dir / "cred").exists(), "a proxy copy outlived its job"


def test_nothing_of_the_payload_is_left_after_cleanup(run: Run) -> None:
    assert not list(run.t.site.work.glob("PanDA_Pilot-*")), "work dirs (and proxy copies) are removed"
    assert not _job_processes(run.t.site.root), "payload processes outlived their jobs"
    if run.t.switched:
        for name in USERS:
            assert not _account_processes(name), f"processes of {name} outlived their jobs"
            uid = pwd.getpwnam(name).pw_uid
            assert not Path(f"/tmp/x509up_u{uid}").exists(), "glexec's target proxy location was not honoured"
            owned = [str(p) for p in run.t.site.root.rglob("*") if p.lstat().st_uid == uid]
            assert not owned
    if cgroup_parent() is not None and ROOT:
        assert not [p for p in cgroup_parent().iterdir() if p.name.startswith(f"pandapilot-{os.getpid()}")]


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_to_the_pilot_ends_all_payload_processes(mode, accounts, proxies, open_root) -> None:
    _needs(mode)
    t = make_site(mode, open_root, proxies)
    t.job(30, "echo $$ > pids; (setsid sleep 300 & echo $! >> pids); setsid sleep 300 & echo $! >> pids; sleep 300")
    pilot = t.start()
    try:
        pids_file = t.site.work / "PanDA_Pilot-30-1" / "work" / "pids"
        pids = wait_for(lambda: pids_file.exists() and len(_pids(pids_file.read_text())) >= 3 and
                        _pids(pids_file.read_text()), 60, "the payload's pids")
        pilot.send_signal(signal.SIGTERM)
        assert pilot.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        stop_pilot(pilot)
    assert t.final(30)["pilot_error_code"] == ErrorCode.SIGTERM
    assert not _job_processes(t.site.root)
    if mode not in ("bwrap", "sandbox"):  # in a sandbox, the PIDs are those of its own namespace
        assert not pids_alive(pids)
    if t.switched:
        assert not _account_processes(ONE)
