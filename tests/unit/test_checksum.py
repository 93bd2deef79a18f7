"""Streaming checksums: adler32 as zlib computes it, md5 as hashlib does, copy and checksum in one pass."""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import zlib

import pytest

from sitemovers.checksum import (
    CHUNK,
    Cancelled,
    Checksum,
    ChecksumError,
    Hasher,
    copy_stream,
    copy_with_checksum,
    file_checksum,
)

SIZES = [0, 1, 7, 65_536, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12_345]


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed + size).randbytes(size)


def adler32_of(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@pytest.mark.parametrize("size", SIZES)
def test_file_adler32_equals_zlib(tmp_path, size):
    data = data_of(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_checksum(path) == Checksum("adler32", adler32_of(data))


@pytest.mark.parametrize("size", SIZES)
def test_file_md5_equals_hashlib(tmp_path, size):
    data = data_of(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_checksum(path, "md5") == Checksum("md5", hashlib.md5(data).hexdigest())


def test_empty_file_checksums(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert file_checksum(path).value == "00000001"
    assert file_checksum(path, "md5").value == "d41d8cd98f00b204e9800998ecf8427e"


def test_adler32_is_zero_padded():
    hasher = Hasher()
    hasher.update(b"\x00")  # adler32 = 0x00010001
    assert hasher.result().value == "00010001"


def test_hasher_in_pieces_equals_whole():
    data = data_of(10_000, seed=3)
    hasher = Hasher(md5=True)
    for start in range(0, len(data), 777):
        hasher.update(data[start:start + 777])
    assert hasher.size == len(data)
    assert hasher.result().value == adler32_of(data)
    assert hasher.result("md5").value == hashlib.md5(data).hexdigest()


def test_md5_must_be_requested():
    with pytest.raises(ValueError):
        Hasher().result("md5")


@pytest.mark.parametrize("size", [0, CHUNK + 1, 2 * CHUNK + 5])
def test_copy_with_checksum(tmp_path, size):
    data = data_of(size, seed=9)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    hasher = copy_with_checksum(src, dst, md5=True)
    assert dst.read_bytes() == data
    assert hasher.size == size
    assert hasher.result().value == adler32_of(data)
    assert hasher.result("md5").value == hashlib.md5(data).hexdigest()


def test_copy_stream_stops_when_cancelled():
    cancel = threading.Event()
    cancel.set()
    out = io.BytesIO()
    with pytest.raises(Cancelled):
        copy_stream(io.BytesIO(b"x" * 10), out, Hasher(), cancel)
    assert out.getvalue() == b""


def test_copy_stream_cancelled_between_chunks():
    cancel = threading.Event()

    class CancelAfterFirstRead(io.BytesIO):
        def read(self, size=-1):
            chunk = super().read(size)
            cancel.set()
            return chunk

    out = io.BytesIO()
    with pytest.raises(Cancelled):
        copy_stream(CancelAfterFirstRead(b"y" * (3 * CHUNK)), out, Hasher(), cancel)
    assert len(out.getvalue()) == CHUNK  # stopped after one chunk, not at the end


def test_checksum_parse_rejects_with_checksum_error():
    with pytest.raises(ChecksumError):
        Checksum.parse("crc32:1234abcd")
    assert issubclass(ChecksumError, ValueError)


def test_a_big_copy_checksums_exactly_the_bytes_copied(tmp_path):
    """Above BIG the copy runs in the kernel in one thread while the other checksums the source."""
    from sitemovers.checksum import BIG, copy_with_checksum

    data = os.urandom(BIG * 2 + 12345)
    (tmp_path / "src").write_bytes(data)
    hasher = copy_with_checksum(tmp_path / "src", tmp_path / "dst", md5=True)
    assert (tmp_path / "dst").read_bytes() == data
    assert hasher.size == len(data)
    assert hasher.result().value == f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
    assert hasher.result("md5").value == hashlib.md5(data).hexdigest()


def test_a_big_copy_stops_when_cancelled(tmp_path):
    from sitemovers.checksum import BIG, Cancelled, copy_with_checksum

    (tmp_path / "src").write_bytes(b"x" * (BIG * 2))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        copy_with_checksum(tmp_path / "src", tmp_path / "dst", cancel=cancel)
