"""The untrusted-file primitives: no link followed, no block on a FIFO, no unbounded read, bounded JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pilot.fsutil import UntrustedFile, loads_json, open_untrusted, read_capped, tail_untrusted


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A directory as a payload could leave it: a FIFO, links to a device and to a real file, a directory."""
    (tmp_path / "plain").write_bytes(b"0123456789")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero")
    os.symlink(tmp_path / "plain", tmp_path / "link")
    (tmp_path / "dir").mkdir()
    return tmp_path


def test_open_untrusted_gives_a_descriptor_of_a_regular_file(hostile: Path) -> None:
    fd = open_untrusted(hostile / "plain")
    try:
        assert os.read(fd, 100) == b"0123456789"
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["fifo", "zero", "link", "dir"])
def test_open_untrusted_refuses_links_and_special_files_without_blocking(hostile: Path, name: str) -> None:
    with pytest.raises(UntrustedFile):
        open_untrusted(hostile / name)


def test_open_untrusted_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_untrusted(tmp_path / "absent")


def test_read_capped_reads_up_to_the_cap_and_refuses_more(hostile: Path) -> None:
    assert read_capped(hostile / "plain", 10) == b"0123456789"
    with pytest.raises(UntrustedFile, match="larger than 9 bytes"):
        read_capped(hostile / "plain", 9)
    assert read_capped(hostile / "plain", 4, truncate=True) == b"0123"


@pytest.mark.parametrize("name", ["fifo", "zero", "dir"])
def test_read_capped_never_reads_a_device_or_fifo(hostile: Path, name: str) -> None:
    with pytest.raises(UntrustedFile):
        read_capped(hostile / name, 1024, truncate=True)


def test_tail_untrusted_reads_only_the_end_and_nothing_of_special_files(hostile: Path) -> None:
    assert tail_untrusted(hostile / "plain", 3) == "789"
    assert tail_untrusted(hostile / "plain", 100) == "0123456789"
    for name in ("fifo", "zero", "link", "dir", "absent"):
        assert tail_untrusted(hostile / name, 100) == ""


def test_tail_untrusted_replaces_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(b"ok \xff\xfe end")
    assert tail_untrusted(tmp_path / "bin", 100) == "ok \ufffd\ufffd end"


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    "[" * 65 + "]" * 65,
])
def test_loads_json_bounds_depth_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="deeper than 64"):
        loads_json(text, max_depth=64)


def test_loads_json_takes_what_is_within_bounds() -> None:
    nested = "[" * 64 + "]" * 64
    assert loads_json(nested, max_depth=64) is not None
    assert loads_json(b'{"PandaID": "1"}') == {"PandaID": "1"}
    assert loads_json(json.dumps({"a": [1, {"b": 2}]})) == {"a": [1, {"b": 2}]}


def test_loads_json_bounds_size_and_refuses_bad_text() -> None:
    with pytest.raises(ValueError, match="larger than"):
        loads_json("[" + "1," * 100 + "1]", max_bytes=100)
    with pytest.raises(ValueError, match="not UTF-8"):
        loads_json(b'{"a": "\xff"}')
    with pytest.raises(ValueError):
        loads_json("{not json")
