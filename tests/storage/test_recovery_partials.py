"""Recovery removes what a dead pilot's puts left at remote storage: only the pilot's partial names of the
job's own outputs, found by the mover's listing (xrootd: `xrdfs ls`; an RSE through its protocol)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sitemovers.base import MoverSettings, is_partial, is_partial_of, partial_name
from sitemovers.rucio import RucioSiteMover
from tests.e2e.conftest import Site, wait_for
from tests.servers.rucio import SCOPE, RucioServer
from tests.servers.xrootd import XRootDServer

pytestmark = pytest.mark.integration

# Put first in PATH by the queue's setup script: the real xrdcp, then, after the first pilot's put of out.dat
# to its temporary name, a wait there (the gate) until the test kills that pilot.
XRDCP = """#!/bin/sh
# test wrapper of the real xrdcp (tests/storage/test_recovery_partials.py)
{xrdcp} "$@" || exit $?
case "$*" in
  *"/.out.dat."*".part")
    if [ ! -e {gate}.reached ]; then echo $$ > {gate}.tmp; mv {gate}.tmp {gate}.reached; exec sleep 600; fi;;
esac
"""
NEIGHBOURS = (".out.dat.12345.part", "out.dat.rucio.upload", "out.dat.part")  # not the pilot's pattern


def _gated_setup(tmp_path: Path) -> tuple[Path, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gate = tmp_path / "gate"
    wrapper = bindir / "xrdcp"
    wrapper.write_text(XRDCP.format(xrdcp=shutil.which("xrdcp"), gate=gate))
    wrapper.chmod(0o755)
    setup = tmp_path / "setup.sh"
    setup.write_text(f'export PATH="{bindir}:$PATH"\n')
    return setup, gate


def test_recovery_removes_the_partial_of_a_put_killed_mid_transfer(xrootd_server: XRootDServer, tmp_path: Path):
    area = xrootd_server.data / f"recovery-{secrets.token_hex(3)}"
    area.mkdir()
    xrootd_server.chown(area)
    setup, gate = _gated_setup(tmp_path)
    site = Site(tmp_path / "site", {"se": xrootd_server.root_url(area), "copytool": "xrootd",
                                    "copysetup": str(setup), "stageout_retries": 1})
    site.add_job(51, "head -c 300000 /dev/urandom > out.dat", (), ("out.dat",))
    first = subprocess.Popen(site.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=site.root)
    reached = Path(f"{gate}.reached")
    try:
        wait_for(lambda: reached.exists() or first.poll() is not None, 120, "the put of out.dat")
        assert reached.exists(), "the pilot ended before its put of out.dat"
    finally:
        first.kill()  # SIGKILL, by its PID
        first.wait(timeout=30)
    held = int(reached.read_text())
    os.killpg(os.getpgid(held), signal.SIGKILL)  # the put's command group, which the killed pilot started

    stored = area / "out" / "scope"
    left = [name for name in os.listdir(stored) if is_partial_of(name, "out.dat")]
    assert len(left) == 1 and (stored / left[0]).stat().st_size == 300_000  # sent, never renamed
    for name in NEIGHBOURS:
        (stored / name).write_bytes(b"not the pilot's")
        xrootd_server.chown(stored / name)

    second = subprocess.run([sys.executable, "-m", "pilot", "recover", *site.argv()[4:]], capture_output=True,
                            text=True, cwd=site.root, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert site.final(51)["job_status"] == "finished"
    names = sorted(os.listdir(stored))
    assert not [name for name in names if is_partial(name)], (names, second.stderr[-3000:])
    assert names == sorted(["out.dat", "51.log.tgz", *NEIGHBOURS])
    assert (stored / "out.dat").stat().st_size == 300_000
    assert "removed the partial file" in second.stdout + second.stderr


def test_rucio_reaches_the_partials_beside_a_did_through_its_rse_protocol(rucio_server: RucioServer,
                                                                          xrootd_server: XRootDServer):
    mover = RucioSiteMover(MoverSettings(setup=str(rucio_server.setup_script())))
    name = f"partials-{secrets.token_hex(3)}.root"
    url = f"rucio://XRD_DISK/{SCOPE}/{name}"
    pfn = mover.turl(url)  # root://127.0.0.1:PORT//<export>/rucio/tests/xx/yy/<name>
    assert pfn.startswith(f"root://127.0.0.1:{xrootd_server.port}/")
    directory = Path(pfn.split("/", 3)[3]).parent
    directory.mkdir(parents=True, exist_ok=True)
    for path in (directory, *directory.parents):  # made here: the server's, as if it had made them
        if path == xrootd_server.data:
            break
        xrootd_server.chown(path)
    ours = sorted({partial_name(name), partial_name(name)})
    others = sorted([f"{name}.rucio.upload", f".{name}.12345.part", partial_name("another.root")])
    for entry in ours + others:
        (directory / entry).write_bytes(b"left over")
        xrootd_server.chown(directory / entry)
    removed = mover.remove_partials(url)
    assert sorted(removed) == sorted(f"{pfn.rpartition('/')[0]}/{entry}" for entry in ours)
    assert sorted(os.listdir(directory)) == others
