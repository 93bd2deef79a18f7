"""A pilot that is not root, in a cgroup v2 subtree delegated to its account: the way a site without a
root pilot gives it cgroups. As root the test makes a cgroup under the v2 hierarchy (found from
/proc/self/mountinfo), delegates it to a test account by the kernel's delegation rules (the directory and
its cgroup.procs, cgroup.threads and cgroup.subtree_control become the account's), moves a shell into it
and drops to the account, which runs the pilot's bundle with the node's python3. Each payload then gets a
child cgroup of its own (made by the pilot, so the account's), is ended with its cgroup.kill, and the pilot
says so in its log; a fork-and-setsid hopper leaves nothing alive."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pilot.cgroups import CGROUP_PREFIX, cgroup2_mount
from pilot.errors import ExitCode
from tests.accounts import made_accounts
from tests.e2e.conftest import Site

NODE_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
DELEGATED = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")  # the kernel's delegation rules
HOPPER = 'export HOP=\'setsid sh -c "$HOP" & exit 0\'; setsid sh -c "$HOP" & sleep 0.5'

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or cgroup2_mount() is None or NODE_PYTHON is None,
                                reason="needs root (a test account, a cgroup to delegate), a cgroup v2 hierarchy "
                                       "and the node's python3 (/usr/bin) for the account to run the bundle")


@pytest.fixture
def delegated() -> Iterator[Path]:
    """A cgroup of this test under the v2 hierarchy; whatever is left in it is killed and it is removed."""
    mount = cgroup2_mount()
    assert mount is not None
    path = mount / f"ptdeleg-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for child in [p for p in path.iterdir() if p.is_dir()] + [path]:
            (child / "cgroup.kill").write_text("1")
        for child in [p for p in path.iterdir() if p.is_dir()] + [path]:
            for _ in range(200):
                try:
                    child.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)  # the kill is under way


def _marked(marker: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and f"TRACK_MARKER={marker}".encode() in \
                    open(f"/proc/{p.pid}/environ", "rb").read():
                found.append(p.pid)
        except (OSError, psutil.Error):
            pass
    return found


def test_a_pilot_that_is_not_root_runs_each_payload_in_a_child_of_its_delegated_cgroup(bundle, delegated) -> None:
    root = Path(tempfile.mkdtemp(prefix="pandapilot-delegated-"))
    marker = uuid.uuid4().hex
    try:
        with made_accounts("d") as made:
            (account,) = made.values()
            site = Site(root)
            site.add_job(1, "grep ^0:: /proc/self/cgroup > cg-1.txt; id -u >> cg-1.txt", outputs=("cg-1.txt",))
            for panda_id in (2, 3, 4):
                site.add_job(panda_id, f"export TRACK_MARKER={marker}; {HOPPER}")
            shutil.copy2(bundle, root / "pandapilot.pyz")
            options = site.run_options()
            for path in [root, *root.rglob("*")]:
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
            for path in [delegated, *(delegated / name for name in DELEGATED)]:
                os.chown(path, account.pw_uid, account.pw_gid)
            argv = ["sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh", str(delegated / "cgroup.procs"),
                    "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
                    "--inh-caps=-all", "--", NODE_PYTHON, str(root / "pandapilot.pyz"), "run", *options]
            env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "PANDAPILOT_NATIVE_CACHE": str(root / "native")}
            pilot = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root,
                                     env=env)
            try:
                out, _ = pilot.communicate(timeout=300)
            finally:
                if pilot.poll() is None:
                    pilot.send_signal(signal.SIGKILL)
                    pilot.wait()
            assert pilot.returncode == ExitCode.OK, out[-3000:]
            for panda_id in (1, 2, 3, 4):
                assert site.final(panda_id)["job_status"] == "finished", site.final(panda_id)
            where, uid = (site.outputs / "cg-1.txt").read_text().splitlines()
            assert where.startswith(f"0::/{delegated.name}/{CGROUP_PREFIX}"), "the payload's own child cgroup"
            assert int(uid) == account.pw_uid != 0
            assert f"payload processes tracked in cgroup {delegated}/{CGROUP_PREFIX}" in out
            assert "killing" in out and "leftover payload process" in out, "the hoppers outlived their leaders"
            assert not _marked(marker), "a hopper process outlived its job"
            assert not [p for p in delegated.iterdir() if p.is_dir()], "each payload cgroup is removed"
    finally:
        shutil.rmtree(root, ignore_errors=True)
