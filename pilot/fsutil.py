"""Small file-system helpers: writes that survive a crash, and reads of files others could have planted.

A file in a directory someone else writes (a job directory, the payload's work dir) is untrusted: it may be
a symbolic link, a FIFO that blocks whoever opens it, a device that never ends, or a file still growing.
`open_untrusted` refuses links and anything but a regular file without blocking; `read_capped` and
`tail_untrusted` read such a file with a bound; `loads_json` parses JSON with bounded size and depth.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Collection, Union

PathLike = Union[str, "os.PathLike[str]"]

JSON_MAX_BYTES = 64 * 2**20  # a job definition or a server reply larger than this is refused
JSON_MAX_DEPTH = 64  # PanDA's dictionaries nest a few levels; nothing needs more


class UntrustedFile(OSError):
    """A file others could write is not a regular file, is too large, or cannot be opened safely."""


def open_untrusted(path: PathLike, flags: int = os.O_RDONLY) -> int:
    """Open without following a final symbolic link and without blocking (a FIFO, a device), then make
    sure it is a regular file. Returns the descriptor (blocking again); raises UntrustedFile when it is
    a link or not a regular file, OSError otherwise (FileNotFoundError when absent)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedFile(errno.ELOOP, "is a symbolic link", str(path)) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise UntrustedFile(exc.errno, "is not a regular file", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UntrustedFile(errno.EINVAL, "is not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(path: PathLike, cap: int, truncate: bool = False) -> bytes:
    """At most `cap` bytes of an untrusted regular file. A larger file raises UntrustedFile, or with
    `truncate=True` gives its first `cap` bytes."""
    fd = open_untrusted(path)
    try:
        chunks: list[bytes] = []
        left = cap + 1  # one byte more tells a file of exactly `cap` bytes from a larger one
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:
        if not truncate:
            raise UntrustedFile(errno.EFBIG, f"is larger than {cap} bytes", str(path))
        data = data[:cap]
    return data


def tail_untrusted(path: PathLike, limit: int) -> str:
    """The last `limit` characters (about) of an untrusted text file; '' when absent or not a regular
    file. Never blocks, never follows a link, never reads more than `limit` bytes."""
    try:
        fd = open_untrusted(path)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        data = b""
        while len(data) < limit:
            chunk = os.read(fd, limit - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")[-limit:]


def json_depth(obj: Any, limit: int) -> int:
    """How deep lists and dictionaries nest in `obj`, counted without recursion up to `limit` + 1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads_json(text: Union[str, bytes], max_bytes: int = JSON_MAX_BYTES, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """json.loads with bounds: larger than `max_bytes`, nested deeper than `max_depth`, not UTF-8 or
    not JSON all raise ValueError (never RecursionError or MemoryError)."""
    if len(text) > max_bytes:
        raise ValueError(f"JSON text of {len(text)} bytes is larger than the limit of {max_bytes}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"JSON text is not UTF-8: {exc}") from None
    try:
        data = json.loads(text)
    except RecursionError:  # the parser's own bound, far below what would exhaust the stack
        raise ValueError(f"JSON nests deeper than {max_depth} levels") from None
    if json_depth(data, max_depth) > max_depth:
        raise ValueError(f"JSON nests deeper than {max_depth} levels")
    return data


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
