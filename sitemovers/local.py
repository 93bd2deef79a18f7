"""The local mover: the storage element is a directory (file:// URL or plain path)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Optional

from sitemovers.base import Expected, Failure, SiteMover, TransferError, TransferResult, verify
from sitemovers.checksum import Cancelled, copy_with_checksum


def local_path(url: str) -> Path:
    """file:///a/b, file://localhost/a/b or /a/b -> Path('/a/b'), never a path that climbs with '..'.

    The rest of a file URL is taken literally, not percent-decoded: file names arrive unquoted, and a
    '%', '#' or '?' in one stays part of the name."""
    path_part = url
    if url.startswith("file:"):
        path_part = url[len("file:"):]
        if path_part.startswith("//localhost/"):
            path_part = path_part[len("//localhost"):]
        elif path_part.startswith("///"):
            path_part = path_part[2:]
        elif path_part.startswith("//"):
            raise TransferError(Failure.FAILED, f"{url}: not a local file URL")
    if not path_part.startswith("/"):
        raise TransferError(Failure.FAILED, f"{url}: the local mover needs an absolute path or file:// URL")
    path = Path(path_part)
    if ".." in path.parts:
        raise TransferError(Failure.FAILED, f"{url}: '..' in a storage path")
    return path


class LocalSiteMover(SiteMover):
    name = "local"

    def _copy(self, src: Path, dst: Path, expected: Expected, cancel: Optional[threading.Event]) -> TransferResult:
        started = time.monotonic()
        want_md5 = expected.checksum is not None and expected.checksum.kind == "md5"
        part = dst.with_name(f".{dst.name}.part")
        try:
            hasher = copy_with_checksum(src, part, md5=want_md5, cancel=cancel)
        except FileNotFoundError as exc:
            missing = Failure.NOT_FOUND if not src.exists() else Failure.FAILED
            raise TransferError(missing, f"{exc.filename}: no such file") from None
        except Cancelled as exc:
            part.unlink(missing_ok=True)
            raise TransferError(Failure.CANCELLED, str(exc)) from None
        except OSError as exc:
            part.unlink(missing_ok=True)
            kind = Failure.NO_SPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else Failure.FAILED
            raise TransferError(kind, f"{src} -> {dst}: {exc.strerror}") from None
        checksum = hasher.result(expected.checksum.kind if want_md5 else "adler32")
        try:
            verify(dst.name, hasher.size, checksum, expected)
        except TransferError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dst)
        return TransferResult(str(dst), hasher.size, checksum, seconds=time.monotonic() - started)

    def get(self, source: str, dest: Path, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        return self._copy(local_path(self.rewrite(source)), Path(dest), expected, cancel)

    def put(self, source: Path, destination: str, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        target = local_path(self.rewrite(destination))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransferError(Failure.FAILED, f"cannot create {target.parent}: {exc.strerror}") from None
        result = self._copy(Path(source), target, expected, cancel)
        result.location = destination
        return result
