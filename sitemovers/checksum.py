"""Checksums as PanDA writes them, and copy-with-checksum in one pass."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import queue
import re
import stat
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


BIG = 8 * CHUNK  # above this, the checksum runs in a second thread, overlapped with the copy
_BUFFERS = 3  # buffers in flight between the copying and the checksumming thread


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


_SYNC_FILE_RANGE_WRITE = 2
_libc: Optional[ctypes.CDLL] = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out now (sync_file_range, SYNC_FILE_RANGE_WRITE; it does
    not wait): a durable copy's final fsync then only waits for the tail. A no-op where unsupported."""
    global _libc  # noqa: PLW0603 - a lazily loaded handle of the C library, no state of the pilot's
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length), _SYNC_FILE_RANGE_WRITE)
    except (OSError, AttributeError):
        pass


def copy_fd(src: int, dst: int, hasher: Hasher, cancel: Optional[threading.Event] = None,
            size_hint: int = 0, writeback: bool = False) -> None:
    """Copy between two file descriptors, feeding `hasher` with exactly the bytes written.

    Large files: the copy (read into one of a few reused buffers, write it out) and the checksum of the
    same buffer run in two threads, so the copy costs about max(copy, checksum), not their sum; both
    os.readv/os.write and zlib.adler32 release the GIL. Small files: one thread, no set-up cost."""
    if size_hint < BIG:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("transfer interrupted")
            chunk = os.read(src, CHUNK)
            if not chunk:
                return
            _write_all(dst, chunk)
            hasher.update(chunk)
    if _copy_in_kernel(src, dst, hasher, cancel, writeback):
        return
    buffers = [bytearray(CHUNK * 4) for _ in range(_BUFFERS)]
    ready: queue.Queue = queue.Queue()  # (index, length) to checksum; None ends
    free: queue.Queue = queue.Queue()
    for index in range(_BUFFERS):
        free.put(index)

    def checksum() -> None:
        while True:
            item = ready.get()
            if item is None:
                return
            index, length = item
            hasher.update(memoryview(buffers[index])[:length])
            free.put(index)

    worker = threading.Thread(target=checksum, name="checksum", daemon=True)
    worker.start()
    written = 0
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("transfer interrupted")
            index = free.get()
            view = memoryview(buffers[index])
            length = os.readv(src, [view])
            if not length:
                free.put(index)
                return
            _write_all(dst, view[:length])
            ready.put((index, length))
            if writeback:
                start_writeback(dst, written, length)
            written += length
    finally:
        ready.put(None)
        worker.join()


def _copy_in_kernel(src: int, dst: int, hasher: Hasher, cancel: Optional[threading.Event],
                    writeback: bool) -> bool:
    """The copy by copy_file_range (in the kernel, no pass through Python's buffers) in one thread while
    this thread reads the same source and checksums it: about max(copy, checksum). False (nothing
    written) where the file systems do not support it, so the caller copies through buffers."""
    start = os.lseek(src, 0, os.SEEK_CUR)
    try:
        first = os.copy_file_range(src, dst, CHUNK * 8, start, 0)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                                           errno.EOPNOTSUPP, errno.EBADF):
            raise
        return False
    failure: list[BaseException] = []
    stop = threading.Event()

    def copy() -> None:
        copied = first
        try:
            while copied and not stop.is_set():
                if writeback:
                    start_writeback(dst, 0, 0)  # everything written so far
                step = os.copy_file_range(src, dst, CHUNK * 8, start + sum_done[0], sum_done[0])
                copied = step
                sum_done[0] += step
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failure.append(exc)

    sum_done = [first]
    worker = threading.Thread(target=copy, name="copy", daemon=True)
    worker.start()
    buf = bytearray(CHUNK * 4)
    view = memoryview(buf)
    offset = start
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("transfer interrupted")
            length = os.preadv(src, [view], offset)
            if not length:
                break
            hasher.update(view[:length])
            offset += length
    finally:
        if failure or (cancel is not None and cancel.is_set()):
            stop.set()
        worker.join()
    if failure:
        raise failure[0]
    if cancel is not None and cancel.is_set():
        raise Cancelled("transfer interrupted")
    written = os.fstat(dst).st_size
    if written != hasher.size:
        raise OSError(errno.EIO, f"copied {written} bytes, read {hasher.size}")
    return True


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def copy_with_checksum(
    source: Path, dest: Path, md5: bool = False, cancel: Optional[threading.Event] = None,
    durable: bool = True,
) -> Hasher:
    """Copy `source` to a new file `dest` (never an existing one, never through a link), computing the
    checksum of the bytes written in the same pass. `durable`: fsync before returning (outputs); an input
    can always be fetched again, so it is not forced to disk."""
    hasher = Hasher(md5=md5)
    src = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the open
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(source))
        os.set_blocking(src, True)
        size = info.st_size
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            copy_fd(src, dst, hasher, cancel, size_hint=size, writeback=durable)
            if durable:
                os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return hasher


def file_checksum(path: Path, kind: str = "adler32") -> Checksum:
    hasher = Hasher(md5=kind == "md5")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(CHUNK * 4)
        view = memoryview(buf)
        while True:
            length = os.readv(fd, [view])
            if not length:
                break
            hasher.update(view[:length])
    finally:
        os.close(fd)
    return hasher.result(kind)
