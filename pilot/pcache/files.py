"""The cache's files: where an entry lives (named by the SHA-256 of its scope and LFN, so no name from a job
definition ever becomes a path), and placing a file by hard link or by copy with its checksum taken."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pilot.fsutil import open_untrusted
from sitemovers.checksum import CHUNK, Checksum, Hasher

log = logging.getLogger(__name__)

NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)  # then a copy


@dataclass(frozen=True)
class CacheKey:
    """A file's storage identity."""

    scope: str
    lfn: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.scope}\0{self.lfn}".encode("utf-8", "surrogateescape")).hexdigest()


def entry_paths(root: Path, key: CacheKey) -> tuple[Path, Path, Path]:
    """(the complete file, its name while being written, its lock file) under the cache's `root`."""
    digest = key.digest
    folder = root / "data" / digest[:2]
    return folder / digest, folder / f"{digest}.fill", folder / f"{digest}.lock"


def clear(root: Path, key: CacheKey) -> None:
    """With the entry locked exclusively: remove its file and what a crashed fill left."""
    data, fill, _ = entry_paths(root, key)
    remove(data)
    remove(fill)


def link_or_copy(source: Path, target: Path, kind: str, link: bool) -> tuple[bool, Checksum]:
    """A hard link (when `link` and possible) or a copy of `source` at `target`, and the checksum of what
    `target` holds. A link to another file system, or one the file system refuses, is a copy."""
    if link:
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in NO_LINK:
                raise
            log.debug("pcache: no hard link %s -> %s (%s): copying", source, target, exc.strerror)
        else:
            return True, checksum_of(target, kind)
    return False, copy(source, target, kind)


def checksum_of(path: Path, kind: str) -> Checksum:
    hasher = Hasher(md5=kind == "md5")
    fd = open_untrusted(path)
    with os.fdopen(fd, "rb") as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            hasher.update(chunk)
    return hasher.result(kind)


def copy(source: Path, dest: Path, kind: str) -> Checksum:
    """Copy with the checksum of the bytes written, in one pass (no fsync: an input can be fetched again)."""
    hasher = Hasher(md5=kind == "md5")
    fd = open_untrusted(source)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "rb") as src, os.fdopen(out, "wb") as dst:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            dst.write(chunk)
            hasher.update(chunk)
    return hasher.result(kind)


def unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove(path: Path) -> None:
    """Remove a cache file, even a read-only one, or whatever else took its name."""
    try:
        unlink(path)
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)
