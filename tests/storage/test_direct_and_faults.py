"""Direct access over root:// from the real XRootD, and the server stopped in the middle of a transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from pilot.config import QueueConfig
from pilot.journal import Journal
from pilot.layout import INPUT_MANIFEST, POOL_FILE_CATALOG
from pilot.staging import Stager
from sitemovers.base import Expected, MoverSettings, Outcome, TransferError, is_partial
from sitemovers.gfal import GfalSiteMover
from sitemovers.registry import Registry
from sitemovers.xrootd import XRootDSiteMover
from tests.servers import xrootd
from tests.storage.conftest import one_file_job

pytestmark = pytest.mark.integration

# The payload: read the input named in the manifest over its TURL (xrdcp to stdout: no local copy).
READER = r"""
import json, subprocess, sys, zlib
entry = json.load(open(sys.argv[1]))['files'][0]
data = subprocess.run(['xrdcp', '--nopbar', '--silent', entry['turl'], '-'], capture_output=True, check=True).stdout
print(entry['turl'], '%08x' % (zlib.adler32(data) & 0xffffffff), len(data))
"""


@pytest.mark.parametrize("family", ["xrootd", "gfal"])
def test_payload_reads_its_input_over_root(xrootd_server, tmp_path, family):
    area = xrootd_server.data / f"direct-{family}"
    area.mkdir()
    xrootd_server.chown(area)
    data = os.urandom(500_000)
    (area / "tests").mkdir()
    (area / "tests" / "events.root").write_bytes(data)
    job = one_file_job("events.root", data, transferType="direct", PandaID="81")
    queue = QueueConfig(name="DIRECT_Q", se=xrootd_server.root_url(area), copytool=family, allowdirectaccess=True)
    work = tmp_path / "work"
    work.mkdir()
    done = Stager(queue, Registry(), threading.Event()).stage_in(job, work, Journal.create(work, 81, 1, "Q", "n", {}))
    assert done[0].outcome is Outcome.DIRECT
    assert not (work / "events.root").exists()  # nothing copied
    assert f'name="{done[0].location}"' in (work / POOL_FILE_CATALOG).read_text()
    read = subprocess.run([sys.executable, "-c", READER, str(work / INPUT_MANIFEST)], capture_output=True,
                          text=True, timeout=120, cwd=work)
    assert read.returncode == 0, read.stderr
    turl, checksum, size = read.stdout.split()
    assert turl.startswith("root://127.0.0.1:") and turl.endswith("/tests/events.root")
    assert (checksum, int(size)) == (job.inputs[0].checksum.value, len(data))


@pytest.mark.parametrize("family", ["xrootd", "gfal"])
def test_server_stopped_mid_transfer(tmp_path, family):
    """The server freezes with the client's connection open, then dies: the get fails with a typed error
    at once (the movers make XRootD's client give up a lost server instead of retrying for minutes: the
    pilot retries transfers itself) and leaves no file, partial or final."""
    missing = xrootd.available()
    if missing:
        pytest.skip(missing)
    server = xrootd.launch()
    try:
        (server.data / "big.root").write_bytes(os.urandom(8 << 20))
        os.kill(server.pid(), signal.SIGSTOP)
        dest = tmp_path / "in"
        dest.mkdir()
        outcome: dict[str, object] = {}

        def get() -> None:
            try:
                mover = XRootDSiteMover() if family == "xrootd" else GfalSiteMover(MoverSettings(timeout=10))
                mover.get(server.root_url(server.data / "big.root"), dest / "big.root",
                                      Expected(8 << 20, None, "", "big.root"))
                outcome["result"] = "copied"
            except TransferError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=get)
        worker.start()
        deadline = time.monotonic() + 60
        while not connected(server.port):  # the transfer has begun: the client holds a connection
            assert time.monotonic() < deadline and worker.is_alive(), "the client never connected"
            time.sleep(0.02)
        os.kill(server.pid(), signal.SIGKILL)
        worker.join(timeout=90)
        assert not worker.is_alive()
        assert "error" in outcome, outcome
        assert "\n" not in outcome["error"].diag  # type: ignore[union-attr]
        assert [name for name in os.listdir(dest) if name == "big.root" or is_partial(name)] == []
    finally:
        server.stop()


def connected(port: int) -> bool:
    return any(c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
               for c in psutil.net_connections("tcp"))


def test_manifest_lists_turls_as_json(xrootd_server, tmp_path):
    area = xrootd_server.data / "manifest"
    area.mkdir()
    xrootd_server.chown(area)
    data = b"x" * 1000
    (area / "tests").mkdir()
    (area / "tests" / "m.root").write_bytes(data)
    job = one_file_job("m.root", data, jobPars="--accessmode=direct", PandaID="82")
    queue = QueueConfig(name="Q", se=xrootd_server.root_url(area), copytool="xrootd", allowdirectaccess=True)
    Stager(queue, Registry(), threading.Event()).stage_in(job, tmp_path, Journal.create(tmp_path, 82, 1, "Q", "n", {}))
    entry = json.loads((tmp_path / INPUT_MANIFEST).read_text())["files"][0]
    assert entry["outcome"] == "direct" and entry["turl"] == xrootd_server.root_url(area / "tests" / "m.root")
