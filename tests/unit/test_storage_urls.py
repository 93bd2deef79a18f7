"""How the real-storage movers put names into URLs and read the tools' answers (no server needed)."""

from __future__ import annotations

import pytest

from sitemovers.base import Failure, TransferError
from sitemovers.gfal import local_url, wire_url
from sitemovers.rucio import parse_did_url
from sitemovers.xrootd import classify, split_root_url


@pytest.mark.parametrize("url, wire", [
    ("root://h:1//d/p%41c", "root://h:1//d/p%2541c"),  # XRootD's client inside gfal2 decodes '%'
    ("root://h:1//d/a b#c", "root://h:1//d/a b#c"),
    ("davs://h:2/d/a b#c%", "davs://h:2/d/a%20b%23c%25"),
    ("file:///d/a%b", "file:///d/a%b"),
])
def test_gfal_wire_urls(url, wire):
    assert wire_url(url) == wire


def test_gfal_local_url_escapes_only_for_root(tmp_path):
    assert local_url(tmp_path / "a%b", "root://h//x").endswith("/a%25b")
    assert local_url(tmp_path / "a%b", "davs://h/x").endswith("/a%b")


@pytest.mark.parametrize("url", ["root://h:1//d/q?x=1", "xroot://h//a?b"])
def test_question_mark_refused(url):
    with pytest.raises(TransferError) as caught:
        split_root_url(url)
    assert caught.value.failure is Failure.UNSUPPORTED
    with pytest.raises(TransferError):
        wire_url(url.replace("xroot://", "root://"))


def test_split_root_url():
    assert split_root_url("root://127.0.0.1:1094//data/a b") == ("root://127.0.0.1:1094", "/data/a b")
    for bad in ("davs://h/x", "root://h", "/plain/path"):
        with pytest.raises(TransferError):
            split_root_url(bad)


@pytest.mark.parametrize("text, failure", [
    ("[ERROR] Server responded with an error: [3011] Unable to open /x; no such file", Failure.NOT_FOUND),
    ("[ERROR] Server responded with an error: [3010] Unable to create /x; permission denied", Failure.AUTH),
    ("Run: [ERROR] CheckSum error", Failure.CHECKSUM_MISMATCH),
    ("[ERROR] Server responded with an error: [3018] Unable to pcreate /x; file exists", Failure.EXISTS),
    ("[FATAL] Connection error", Failure.FAILED),
])
def test_xrootd_classify(text, failure):
    assert classify(54, text) is failure


def test_did_urls():
    assert parse_did_url("rucio://XRD_DISK/prod/path/mc16/f.root") == {"rse": "XRD_DISK", "scope": "mc16",
                                                                        "name": "f.root"}
    for bad in ("rucio://RSE/onlyname", "root://h//x"):
        with pytest.raises(TransferError):
            parse_did_url(bad)
