"""The xrootd and gfal movers against a real XRootD server (root:// and its HTTP plugin) and gfal2's file://.

Each test runs for every family (tests/storage/conftest.py): put then get with size and adler32 checked
by the tools, the faults the issue names, and that no temporary file is ever left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sitemovers.base import Expected, Failure, Outcome, TransferError, is_partial
from sitemovers.checksum import Checksum
from tests.storage.conftest import Storage, write_file

pytestmark = pytest.mark.integration

HOSTILE = ["a b", "p%41c", "h#x", "s;$(id)'\"`", "..x", "-rf"]


def no_partials(*dirs: Path) -> None:
    for directory in dirs:
        left = [name for name in os.listdir(directory) if is_partial(name) or name.endswith(".d")]
        assert not left, f"temporary files left in {directory}: {left}"


def test_put_then_get_verified(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "out.root"
    checksum = write_file(source)
    put = storage.mover.put(source, storage.url("out.root"), Expected(100_000, None, "", "out.root"))
    assert (put.fsize, put.checksum, put.outcome) == (100_000, checksum, Outcome.COPIED)
    assert storage.path("out.root").read_bytes() == source.read_bytes()
    assert storage.mover.stat(storage.url("out.root")) is not None
    remote = storage.mover.stat(storage.url("out.root"))
    assert remote is not None and (remote.fsize, remote.checksum) == (100_000, checksum)
    back = tmp_path / "in"
    back.mkdir()
    got = storage.mover.get(storage.url("out.root"), back / "out.root", Expected(100_000, checksum, "", "out.root"))
    assert (got.fsize, got.checksum) == (100_000, checksum)
    assert (back / "out.root").read_bytes() == source.read_bytes()
    assert storage.names() == ["out.root"]
    no_partials(back)


def test_missing_source_is_not_found(storage: Storage, tmp_path: Path) -> None:
    dest = tmp_path / "in"
    dest.mkdir()
    with pytest.raises(TransferError) as caught:
        storage.mover.get(storage.url("nothing.root"), dest / "nothing.root", Expected(10, None, "", "x"))
    assert caught.value.failure is Failure.NOT_FOUND
    assert storage.mover.stat(storage.url("nothing.root")) is None
    assert os.listdir(dest) == []


@pytest.mark.parametrize("expected, failure", [
    (Expected(100_000, Checksum("adler32", "00000001"), "", "f"), Failure.CHECKSUM_MISMATCH),
    (Expected(99_999, None, "", "f"), Failure.SIZE_MISMATCH),
], ids=["checksum", "size"])
def test_mismatch_leaves_nothing(storage: Storage, tmp_path: Path, expected: Expected, failure: Failure) -> None:
    source = tmp_path / "f"
    write_file(source)
    storage.mover.put(source, storage.url("f"), Expected(100_000, None, "", "f"))
    dest = tmp_path / "in"
    dest.mkdir()
    with pytest.raises(TransferError) as caught:
        storage.mover.get(storage.url("f"), dest / "f", expected)
    assert caught.value.failure is failure
    assert os.listdir(dest) == []


def test_existing_destination_is_never_replaced(storage: Storage, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_file(first)
    write_file(second)
    storage.mover.put(first, storage.url("out"), Expected(100_000, None, "", "out"))
    with pytest.raises(TransferError) as caught:
        storage.mover.put(second, storage.url("out"), Expected(100_000, None, "", "out"))
    assert caught.value.failure is Failure.EXISTS
    assert storage.path("out").read_bytes() == first.read_bytes()
    assert storage.names() == ["out"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_names(storage: Storage, tmp_path: Path, name: str) -> None:
    source = tmp_path / name
    checksum = write_file(source, 1000)
    storage.mover.put(source, storage.url(name), Expected(1000, None, "", name))
    assert storage.names() == [name]
    dest = tmp_path / "in"
    dest.mkdir()
    storage.mover.get(storage.url(name), dest / name, Expected(1000, checksum, "", name))
    assert os.listdir(dest) == [name]


def test_question_mark_refused_on_xrootd(storage: Storage, tmp_path: Path) -> None:
    if storage.url("x").startswith("file://"):
        pytest.skip("file:// takes '?' literally")
    source = tmp_path / "q?x=1"
    write_file(source, 10)
    with pytest.raises(TransferError) as caught:
        storage.mover.put(source, storage.url("q?x=1"), Expected(10, None, "", "q?x=1"))
    assert caught.value.failure is Failure.UNSUPPORTED
    assert storage.names() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the server runs as another account than the test")
def test_permission_denied(storage: Storage, tmp_path: Path) -> None:
    if storage.url("x").startswith("file://"):
        pytest.skip("file:// is written by the pilot's own account (root here), which permissions do not stop")
    locked = storage.path("locked")
    locked.mkdir(mode=0o755)  # root's: the server's account may not write there
    source = tmp_path / "f"
    write_file(source, 10)
    with pytest.raises(TransferError) as caught:
        storage.mover.put(source, storage.url("locked/f"), Expected(10, None, "", "f"))
    assert caught.value.failure is Failure.AUTH, caught.value.diag
    assert os.listdir(locked) == []


def test_turl_is_readable(storage: Storage, tmp_path: Path) -> None:
    if storage.url("x").startswith("file://"):
        pytest.skip("file:// is no remote read")
    source = tmp_path / "f"
    write_file(source, 10)
    storage.mover.put(source, storage.url("f"), Expected(10, None, "", "f"))
    turl = storage.mover.turl(storage.url("f"))
    assert turl.startswith(("root://", "davs://"))
    assert storage.mover.stat(turl) is not None


def test_remove(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "f"
    write_file(source, 10)
    storage.mover.put(source, storage.url("f"), Expected(10, None, "", "f"))
    storage.mover.remove(storage.url("f"))
    storage.mover.remove(storage.url("f"))  # no error for a file that is gone
    assert storage.names() == []


def _other_address() -> str:
    """An address of this machine that is not loopback ('' when it has none)."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: the kernel picks the outgoing address
        address = probe.getsockname()[0]
    except OSError:
        return ""
    finally:
        probe.close()
    return "" if address.startswith("127.") else address


def test_xrootd_server_refuses_any_peer_but_loopback(xrootd_server) -> None:
    """XRootD listens on the wildcard address (it has no bind address: tests/servers/xrootd.py), so the
    restriction is xrd.allow: the same request from this machine's other address is refused."""
    import subprocess

    other = _other_address()
    if not other:
        pytest.skip("this machine has no address but loopback to connect from")
    env = {**os.environ, "XRD_CONNECTIONRETRY": "1", "XRD_CONNECTIONWINDOW": "10", "XRD_REQUESTTIMEOUT": "30"}

    def stat_from(host: str) -> subprocess.CompletedProcess:
        return subprocess.run(["xrdfs", f"root://{host}:{xrootd_server.port}", "stat", str(xrootd_server.data)],
                              capture_output=True, text=True, env=env, timeout=120)

    assert stat_from("127.0.0.1").returncode == 0
    refused = stat_from(other)
    assert refused.returncode != 0 and "Size" not in refused.stdout
