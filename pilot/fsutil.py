"""Small file-system helpers: writes that survive a crash."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Collection


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary name in the same directory, fsync, rename over `path`, fsync the directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def append_line(path: Path, line: str) -> None:
    """Append one line durably (for history files read line by line)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class UntrustedFile(OSError):
    """A file the pilot will not read: a link, a special file, or larger than allowed."""


def open_untrusted(path: Path, flags: int = os.O_RDONLY) -> int:
    """Open without following a link and without blocking on a FIFO; only a regular file is accepted."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UntrustedFile(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(path: Path, cap: int, truncate: bool = False) -> bytes:
    """At most `cap` bytes of a regular file; a bigger one raises UntrustedFile (or, with `truncate`,
    gives its first `cap` bytes)."""
    fd = open_untrusted(path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        if not truncate:
            raise UntrustedFile(f"{path}: larger than {cap} bytes")
        data = data[:cap]
    return data


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_size(path: Path) -> int:
    """Bytes used by the regular files under `path` (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def newest_mtime(path: Path, ignore: Collection[str] = ()) -> float:
    """The latest modification time of anything below `path` (0 if empty). Entries of `path` itself
    named in `ignore`, and their temporary '.<name>.*' files, do not count, nor does the mtime of `path`
    (it changes whenever an ignored file is replaced)."""
    newest = 0.0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            if root == str(path) and (name in ignore or any(name.startswith(f".{i}.") for i in ignore)):
                continue
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest
