"""The local site mover (a directory as storage element) and the mover registry."""

from __future__ import annotations

import hashlib
import os
import threading
import zlib

import pytest

from sitemovers.base import Expected, Failure, MoverSettings, Outcome, TransferError
from sitemovers.checksum import Checksum
from sitemovers.local import LocalSiteMover, local_path
from sitemovers.registry import Registry, UnknownMover

DATA = b"payload bytes " * 1000


def adler(data: bytes) -> Checksum:
    return Checksum("adler32", f"{zlib.adler32(data) & 0xFFFFFFFF:08x}")


def md5(data: bytes) -> Checksum:
    return Checksum("md5", hashlib.md5(data).hexdigest())


@pytest.fixture
def se(tmp_path):
    path = tmp_path / "se"
    path.mkdir()
    (path / "in.root").write_bytes(DATA)
    return path


def failure_of(call) -> TransferError:
    with pytest.raises(TransferError) as info:
        call()
    return info.value


# --- get --------------------------------------------------------------------------------------------
def test_get_with_matching_size_and_adler32(se, work):
    result = LocalSiteMover().get(str(se / "in.root"), work / "in.root", Expected(len(DATA), adler(DATA)))
    assert (work / "in.root").read_bytes() == DATA
    assert result.location == str(work / "in.root")
    assert result.fsize == len(DATA)
    assert result.checksum == adler(DATA)
    assert result.outcome is Outcome.COPIED
    assert os.listdir(work) == ["in.root"]  # no .part left


def test_get_computes_md5_when_md5_is_expected(se, work):
    result = LocalSiteMover().get(str(se / "in.root"), work / "in.root", Expected(None, md5(DATA)))
    assert result.checksum == md5(DATA)


def test_get_without_expectations_reports_adler32(se, work):
    assert LocalSiteMover().get(str(se / "in.root"), work / "x", Expected()).checksum == adler(DATA)


@pytest.mark.parametrize("expected, failure, kind", [
    (Expected(fsize=len(DATA) + 1), Failure.SIZE_MISMATCH, ""),
    (Expected(checksum=Checksum("adler32", "00000001")), Failure.CHECKSUM_MISMATCH, "adler32"),
    (Expected(checksum=Checksum("md5", "0" * 32)), Failure.CHECKSUM_MISMATCH, "md5"),
])
def test_get_mismatch_leaves_nothing_at_destination(se, work, expected, failure, kind):
    err = failure_of(lambda: LocalSiteMover().get(str(se / "in.root"), work / "in.root", expected))
    assert err.failure is failure
    assert err.checksum_kind == kind
    assert err.failure.retryable
    assert os.listdir(work) == []


def test_get_mismatch_does_not_touch_an_existing_destination(se, work):
    (work / "in.root").write_bytes(b"old")
    failure_of(lambda: LocalSiteMover().get(str(se / "in.root"), work / "in.root", Expected(fsize=1)))
    assert (work / "in.root").read_bytes() == b"old"
    assert os.listdir(work) == ["in.root"]


def test_get_missing_source_is_not_found(se, work):
    err = failure_of(lambda: LocalSiteMover().get(str(se / "absent.root"), work / "absent.root", Expected()))
    assert err.failure is Failure.NOT_FOUND
    assert not err.failure.retryable
    assert os.listdir(work) == []


def test_get_into_missing_directory_is_a_plain_failure(se, tmp_path):
    err = failure_of(lambda: LocalSiteMover().get(str(se / "in.root"), tmp_path / "nodir" / "x", Expected()))
    assert err.failure is Failure.FAILED


def test_cancelled_get_leaves_nothing(se, work):
    cancel = threading.Event()
    cancel.set()
    err = failure_of(lambda: LocalSiteMover().get(str(se / "in.root"), work / "in.root", Expected(), cancel))
    assert err.failure is Failure.CANCELLED
    assert not err.failure.retryable
    assert os.listdir(work) == []


@pytest.mark.parametrize("url_of", [
    lambda p: f"file://{p}",
    lambda p: f"file://localhost{p}",
])
def test_get_from_file_url(se, work, url_of):
    LocalSiteMover().get(url_of(se / "in.root"), work / "in.root", Expected(len(DATA)))
    assert (work / "in.root").read_bytes() == DATA


def test_file_url_is_taken_literally(tmp_path, work):
    odd = tmp_path / "with%20space#1?x"  # names arrive unquoted: '%', '#', '?' are part of them
    odd.mkdir()
    (odd / "f").write_bytes(b"abc")
    LocalSiteMover().get(f"file://{tmp_path}/with%20space#1?x/f", work / "f", Expected(3))
    assert (work / "f").read_bytes() == b"abc"


@pytest.mark.parametrize("url", ["file://otherhost/data/f", "relative/path", "root://se//data/f"])
def test_urls_the_local_mover_cannot_read(work, url):
    # not this mover's kind of URL: another mover of the queue's list may read it
    err = failure_of(lambda: LocalSiteMover().get(url, work / "f", Expected()))
    assert err.failure is Failure.UNSUPPORTED and err.failure.another_mover_may_help
    assert os.listdir(work) == []


def test_local_path():
    assert str(local_path("file:///a/b")) == "/a/b"
    assert str(local_path("file:/a/b")) == "/a/b"
    assert str(local_path("file://localhost/a/b")) == "/a/b"
    assert str(local_path("/a/b")) == "/a/b"
    with pytest.raises(TransferError):
        local_path("file:///a/../b")


def test_prefix_rewrite(se, work):
    mover = LocalSiteMover(MoverSettings(prefix_rewrites=[("srm://nothere/", "/nowhere/"),
                                                          ("srm://se.example:8446/srm?SFN=/", f"{se}/")]))
    mover.get("srm://se.example:8446/srm?SFN=/in.root", work / "in.root", Expected(len(DATA)))
    assert (work / "in.root").read_bytes() == DATA


def test_rewrite_only_at_the_start():
    mover = LocalSiteMover(MoverSettings(prefix_rewrites=[("/a/", "/b/")]))
    assert mover.rewrite("/a/x") == "/b/x"
    assert mover.rewrite("/c/a/x") == "/c/a/x"


# --- put --------------------------------------------------------------------------------------------
def test_put_creates_directories_and_reports_the_destination_url(se, work):
    (work / "out.root").write_bytes(DATA)
    destination = f"file://{se}/mc16/out.root"
    result = LocalSiteMover().put(work / "out.root", destination, Expected(len(DATA)))
    assert (se / "mc16" / "out.root").read_bytes() == DATA
    assert result.location == destination
    assert (result.fsize, result.checksum) == (len(DATA), adler(DATA))
    assert os.listdir(se / "mc16") == ["out.root"]


def test_put_size_mismatch_leaves_nothing(se, work):
    (work / "out.root").write_bytes(DATA)
    err = failure_of(lambda: LocalSiteMover().put(work / "out.root", str(se / "out.root"), Expected(fsize=1)))
    assert err.failure is Failure.SIZE_MISMATCH
    assert sorted(os.listdir(se)) == ["in.root"]


def test_put_of_missing_file_is_not_found(se, work):
    err = failure_of(lambda: LocalSiteMover().put(work / "absent", str(se / "x"), Expected()))
    assert err.failure is Failure.NOT_FOUND


# --- registry ---------------------------------------------------------------------------------------
def test_registry_finds_local():
    registry = Registry()
    assert "local" in registry.names()
    mover = registry.create("local", MoverSettings(setup="x"))
    assert isinstance(mover, LocalSiteMover)
    assert mover.settings.setup == "x"


def test_registry_unknown_name_lists_known_ones():
    with pytest.raises(UnknownMover) as info:
        Registry().create("teleport")
    assert "teleport" in str(info.value)
    assert "local" in str(info.value)


def test_registry_extra_classes():
    class Fake(LocalSiteMover):
        name = "fake"

    registry = Registry(extra={"fake": Fake})
    assert {"fake", "local"} <= set(registry.names())
    assert type(registry.create("fake")) is Fake
