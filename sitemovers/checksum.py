"""Checksums as PanDA writes them, and copy-with-checksum in one pass."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

CHUNK = 1 << 20  # 1 MiB

_HEX = re.compile(r"^[0-9a-fA-F]+$")


class ChecksumError(ValueError):
    """A checksum string that is neither adler32 nor md5."""


@dataclass(frozen=True)
class Checksum:
    kind: str  # "adler32" or "md5"
    value: str  # lower-case hex; adler32 zero-padded to 8 digits

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """'ad:xxxxxxxx', 'adler32:...', 'md5:...', or bare hex (8 digits adler32, 32 digits md5)."""
        raw = text.strip()
        kind = ""
        if ":" in raw:
            prefix, raw = raw.split(":", 1)
            kind = {"ad": "adler32", "adler32": "adler32", "md5": "md5", "md5sum": "md5"}.get(prefix.lower(), "?")
            if kind == "?":
                raise ChecksumError(f"unknown checksum type {prefix!r}")
        if not _HEX.match(raw):
            raise ChecksumError(f"checksum {text!r} is not hexadecimal")
        if not kind:
            kind = {8: "adler32", 32: "md5"}.get(len(raw), "")
            if not kind:
                raise ChecksumError(f"checksum {text!r} has {len(raw)} digits: neither adler32 (8) nor md5 (32)")
        if kind == "adler32":
            if len(raw) > 8:
                raise ChecksumError(f"adler32 {text!r} has more than 8 digits")
            raw = raw.zfill(8)
        elif len(raw) != 32:
            raise ChecksumError(f"md5 {text!r} does not have 32 digits")
        return cls(kind, raw.lower())

    def __str__(self) -> str:
        return f"{'ad' if self.kind == 'adler32' else 'md5'}:{self.value}"


class Hasher:
    """adler32 always (PanDA's default), md5 on request, fed chunk by chunk."""

    def __init__(self, md5: bool = False) -> None:
        self._adler = 1
        self._md5 = hashlib.md5() if md5 else None  # noqa: S324 - a transfer checksum, not security
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._adler = zlib.adler32(chunk, self._adler)
        if self._md5 is not None:
            self._md5.update(chunk)
        self.size += len(chunk)

    def result(self, kind: str = "adler32") -> Checksum:
        if kind == "md5":
            if self._md5 is None:
                raise ValueError("md5 was not requested")
            return Checksum("md5", self._md5.hexdigest())
        return Checksum("adler32", f"{self._adler & 0xFFFFFFFF:08x}")


class Cancelled(Exception):
    """A copy stopped because the pilot was asked to stop."""


def copy_stream(
    src: BinaryIO, dst: BinaryIO, hasher: Hasher, cancel: Optional[threading.Event] = None
) -> None:
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled("transfer interrupted")
        chunk = src.read(CHUNK)
        if not chunk:
            return
        dst.write(chunk)
        hasher.update(chunk)


def copy_with_checksum(
    source: Path, dest: Path, md5: bool = False, cancel: Optional[threading.Event] = None
) -> Hasher:
    """Copy `source` to `dest` (fsynced), computing the checksum of the bytes written in the same pass."""
    hasher = Hasher(md5=md5)
    with open(source, "rb") as src, open(dest, "wb") as dst:
        copy_stream(src, dst, hasher, cancel)
        dst.flush()
        os.fsync(dst.fileno())
    return hasher


def file_checksum(path: Path, kind: str = "adler32") -> Checksum:
    hasher = Hasher(md5=kind == "md5")
    with open(path, "rb") as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            hasher.update(chunk)
    return hasher.result(kind)
