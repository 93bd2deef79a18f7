"""Identity switching pieces that need no second account: DN mapping, glexec's lookup and exit codes,
the wrapper, the user proxy's storage, the payload environment."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from pilot.accounts import GridMap
from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.glexec import Glexec
from pilot.identity import make_launcher
from pilot.job import parse_job
from pilot.launcher import NoSwitch
from pilot.layout import JobDir
from pilot.payload import payload_env
from pilot.sandbox import Sandbox
from pilot.uidswitch import UidSwitch
from pilot.userproxy import store_user_proxy, user_dn

ME = pwd.getpwuid(os.getuid()).pw_name


def mapfile(tmp_path: Path, text: str) -> GridMap:
    path = tmp_path / "grid-mapfile"
    path.write_text(text)
    return GridMap.load(path)


def test_grid_mapfile_exact_dn_pattern_and_first_match(tmp_path):
    gmap = mapfile(tmp_path, f'# comment\n"/DC=org/CN=Exact One" {ME}\n"/DC=org/OU=*/CN=*" daemon\n'
                             '"/DC=org/CN=Exact One" nobody\n')
    assert gmap.account("/DC=org/CN=Exact One").name == ME
    assert gmap.account("/DC=org/OU=physics/CN=Someone").name == "daemon"
    with pytest.raises(PilotError) as info:
        gmap.account("/DC=elsewhere/CN=Stranger")
    assert info.value.code == ErrorCode.GLEXEC and "not mapped" in info.value.diag


def test_grid_mapfile_pool_gives_a_dn_always_the_same_member(tmp_path, monkeypatch):
    members = [pwd.struct_passwd((f"atlas{n:03d}", "x", 5000 + n, 5000, "", "/home", "/bin/sh")) for n in (1, 2, 3)]
    monkeypatch.setattr(pwd, "getpwall", lambda: members)
    monkeypatch.setattr(pwd, "getpwnam", lambda name: next(m for m in members if m.pw_name == name))
    gmap = mapfile(tmp_path, '"/DC=org/CN=*" .atlas\n')
    first = gmap.account("/DC=org/CN=Alice")
    assert first.name.startswith("atlas") and gmap.account("/DC=org/CN=Alice") == first


def test_an_account_name_from_the_map_is_checked_before_use(tmp_path):
    gmap = mapfile(tmp_path, '"/DC=org/CN=X" Root/../etc\n')
    with pytest.raises(PilotError, match="not an account name"):
        gmap.account("/DC=org/CN=X")


@pytest.mark.parametrize("subject, dn", [
    ("/DC=org/CN=Alice/CN=123456", "/DC=org/CN=Alice"),
    ("/DC=org/CN=Alice/CN=proxy/CN=limited proxy", "/DC=org/CN=Alice"),
    ("/DC=org/CN=Alice", "/DC=org/CN=Alice"),
])
def test_the_user_dn_drops_the_proxy_cns(subject, dn):
    assert user_dn(subject) == dn


@pytest.mark.parametrize("code, expected", [(201, ErrorCode.GLEXEC), (202, ErrorCode.GLEXEC), (203, ErrorCode.GLEXEC),
                                            (204, ErrorCode.PAYLOAD_FAILED)])
def test_glexec_exit_codes_are_mapped(code, expected):
    assert Glexec(QueueConfig()).code_error(code).code == expected


def test_the_payloads_own_exit_codes_are_not_glexecs(tmp_path):
    for code in (0, 1, 126, 137, 200):
        assert Glexec(QueueConfig()).exit_error(code, JobDir(tmp_path)) is None


def test_glexec_is_found_through_the_configured_path_then_the_environment(tmp_path, monkeypatch):
    for var in ("GLEXEC_LOCATION", "OSG_GLEXEC_LOCATION", "GLITE_LOCATION"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(PilotError, match="glexec not found"):
        Glexec(QueueConfig()).binary()
    binary = tmp_path / "osg" / "sbin" / "glexec"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("OSG_GLEXEC_LOCATION", str(tmp_path / "osg"))
    assert Glexec(QueueConfig()).binary() == str(binary)
    assert Glexec(QueueConfig(glexec_path="/bin/true")).binary() == "/bin/true"


def test_the_wrapper_is_never_written_through_a_planted_name(tmp_path):
    dirs = JobDir(tmp_path)
    dirs.payload.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    dirs.wrapper.symlink_to(victim)
    with pytest.raises(PilotError) as info:
        UidSwitch(QueueConfig()).write_wrapper(dirs, {"PATH": "/bin"}, None)
    assert info.value.code == ErrorCode.SETUP_FAILURE and "wrapper" in info.value.diag
    assert victim.read_text() == "untouched"


def test_the_wrapper_exports_a_clean_environment_quoted(tmp_path):
    dirs = JobDir(tmp_path)
    dirs.payload.mkdir()
    wrapper = UidSwitch(QueueConfig()).write_wrapper(dirs, {"PATH": "/bin", "ODD": "a'b $(x)", "HOME": "/root"}, None)
    text = wrapper.read_text()
    assert "export ODD='a'\"'\"'b $(x)'" in text and "export HOME" not in text
    assert "unset LD_PRELOAD" in text and text.rstrip().endswith('exec "$@"')
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o644


def test_the_user_proxy_is_kept_0600_in_a_0700_dir(tmp_path):
    dirs = JobDir(tmp_path)
    path = store_user_proxy(dirs, b"-----BEGIN CERTIFICATE-----\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(dirs.proxy_dir.stat().st_mode) == 0o700


def test_uid_mode_without_a_dn_or_a_map_fails_the_job(tmp_path):
    job = parse_job({"PandaID": "1", "transformation": "/bin/true", "outFiles": "1.log.tgz", "logFile": "1.log.tgz"})
    with pytest.raises(PilotError, match="grid_mapfile"):
        UidSwitch(QueueConfig()).account_for(job, None)
    with pytest.raises(PilotError, match="no user DN"):
        UidSwitch(QueueConfig(grid_mapfile=str(tmp_path / "m"))).account_for(job, None)


def test_glexec_without_a_user_proxy_fails_with_no_proxy(tmp_path, monkeypatch):
    job = parse_job({"PandaID": "1", "transformation": "/bin/true", "outFiles": "1.log.tgz", "logFile": "1.log.tgz"})
    with pytest.raises(PilotError) as info:
        Glexec(QueueConfig(glexec_path="/bin/true")).prepare(job, JobDir(tmp_path), ["true"], {})
    assert info.value.code == ErrorCode.NO_PROXY


def test_the_launcher_follows_the_queue(tmp_path):
    assert isinstance(make_launcher(QueueConfig(), tmp_path), NoSwitch)
    boxed = make_launcher(QueueConfig(identity="uid", sandbox="bubblewrap"), tmp_path)
    assert isinstance(boxed, Sandbox) and isinstance(boxed.inner, UidSwitch)
    with pytest.raises(ValueError, match="identity"):
        make_launcher(QueueConfig(identity="su"), tmp_path)


def test_only_production_jobs_get_the_pilot_credentials_the_queue_names(tmp_path):
    base = {"PATH": "/bin", "X509_USER_PROXY": "/tmp/x509up_u0", "BEARER_TOKEN_FILE": "/t", "PANDA_AUTH_TOKEN": "s",
            "LD_PRELOAD": "/evil.so"}
    common = {"PandaID": "1", "outFiles": "1.log.tgz", "logFile": "1.log.tgz"}
    production = parse_job({**common, "transformation": "Reco_tf.py", "prodSourceLabel": "managed"})
    analysis = parse_job({**common, "transformation": "https://host/run.sh", "prodSourceLabel": "user"})
    assert "X509_USER_PROXY" not in payload_env(production, tmp_path, base)
    env = payload_env(production, tmp_path, base, ("X509_USER_PROXY",))
    assert env["X509_USER_PROXY"] == "/tmp/x509up_u0" and "BEARER_TOKEN_FILE" not in env
    env = payload_env(analysis, tmp_path, base, ("X509_USER_PROXY",))
    assert not {"X509_USER_PROXY", "BEARER_TOKEN_FILE", "PANDA_AUTH_TOKEN", "LD_PRELOAD"} & set(env)


def test_a_dn_mapped_to_the_pilots_own_account_never_runs_as_the_pilot(tmp_path):
    (tmp_path / "map").write_text(f'"/DC=org/CN=Me" {ME}\n')
    job = parse_job({"PandaID": "1", "transformation": "/bin/true", "outFiles": "1.log.tgz", "logFile": "1.log.tgz",
                     "prodUserID": "/DC=org/CN=Me"})
    dirs = JobDir(tmp_path / "job")
    dirs.root.mkdir()
    with pytest.raises(PilotError) as info:
        UidSwitch(QueueConfig(grid_mapfile=str(tmp_path / "map"))).prepare(job, dirs, ["true"], {"PATH": "/bin"})
    assert info.value.code == ErrorCode.GLEXEC and "pilot's account" in info.value.diag
    assert not dirs.wrapper.exists()


def test_a_wrapper_under_the_pilots_account_refuses_and_says_so_where_only_that_account_can(tmp_path):
    dirs = JobDir(tmp_path)
    dirs.payload.mkdir()
    launcher = UidSwitch(QueueConfig())
    wrapper = launcher.write_wrapper(dirs, {"PATH": os.environ["PATH"]}, None)
    assert dirs.wrapper_status.read_bytes() == b"" and stat.S_IMODE(dirs.wrapper_status.stat().st_mode) == 0o600
    ran = tmp_path / "ran"
    done = subprocess.run(["/bin/bash", str(wrapper), "touch", str(ran)], capture_output=True, text=True)
    assert done.returncode == 200 and "refused" in done.stderr
    assert not ran.exists(), "the payload never runs as the pilot"
    error = launcher.exit_error(done.returncode, dirs)
    assert error is not None and error.code == ErrorCode.GLEXEC and "did not run" in error.diag


def test_a_payload_exiting_200_is_not_taken_for_a_refusal(tmp_path):
    dirs = JobDir(tmp_path)
    dirs.payload.mkdir()
    launcher = UidSwitch(QueueConfig())
    launcher.write_wrapper(dirs, {}, None)  # the status file stays empty: the wrapper reached the payload
    assert launcher.exit_error(200, dirs) is None
    dirs.wrapper_status.unlink()
    dirs.wrapper_status.symlink_to(tmp_path / "elsewhere")  # never followed
    (tmp_path / "elsewhere").write_text("refused\n")
    assert launcher.exit_error(200, dirs) is None
