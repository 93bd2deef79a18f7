"""Shared part of the lsm-get / lsm-put / lsm-rm site commands for a directory storage element.

The local-site-mover protocol: `lsm-get [-t TOKEN] [--size N] [--checksum TYPE:VALUE] [--guid G] SRC DEST`,
`lsm-put [...] SRC SURL`, `lsm-rm SURL`; SRC/SURL a path or a file:// URL. The command verifies what it
copied and says what went wrong through its exit code (the protocol's numbers):
0 ok, 200 generic failure, 201 copy failed, 202 unsupported command, 203 unsupported option, 204 size
comparison failed, 205 checksum comparison failed, 206 cannot write the destination (does not exist),
207 permission problem, 209/210 the size/checksum given differs from the source's, 211 the destination
exists and differs, 212 the destination exists and is the same file, 213 destination full.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
import zlib

CHUNK = 4 << 20


class Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(argv: list[str], positional: int) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        flag = args.pop(0)
        if flag == "--":
            break
        if flag not in ("-t", "--size", "--checksum", "--guid") or not args:
            raise Exit(203, f"unsupported option {flag}")
        options[flag] = args.pop(0)
    if len(args) != positional:
        raise Exit(202, f"needs {positional} path argument(s), got {len(args)}")
    if "--size" in options and not options["--size"].isdigit():
        raise Exit(203, f"illegal size {options['--size']!r}")
    if "--checksum" in options:
        kind = options["--checksum"].partition(":")[0].lower()
        if kind not in ("adler32", "ad", "md5"):
            raise Exit(203, f"unsupported checksum type {kind!r}")
    return options, args


def path_of(url: str) -> str:
    if url.startswith("file://"):
        url = url[len("file://"):]
        if url.startswith("localhost/"):
            url = url[len("localhost"):]
    if not url.startswith("/") or "/../" in f"{url}/":
        raise Exit(202, f"not a path of this storage element: {url}")
    return url


def checksum(fd: int, kind: str) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    adler, md5 = 1, hashlib.md5()  # noqa: S324 - a transfer checksum
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break
        if kind == "md5":
            md5.update(chunk)
        else:
            adler = zlib.adler32(chunk, adler)
    return md5.hexdigest() if kind == "md5" else f"{adler & 0xFFFFFFFF:08x}"


def wanted(options: dict[str, str]) -> tuple[str, str]:
    """(kind, value) of the --checksum option, ('adler32', '') without one."""
    kind, _, value = options.get("--checksum", "adler32:").partition(":")
    kind = "md5" if kind.lower() == "md5" else "adler32"
    return kind, value.lower().zfill(8) if kind == "adler32" and value else value.lower()


def open_regular(path: str) -> int:
    """A regular file, never through a link, never blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    os.set_blocking(fd, True)
    return fd


def copy(src: int, dst: int) -> None:
    os.lseek(src, 0, os.SEEK_SET)
    while True:
        chunk = os.read(src, CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


def io_exit(exc: OSError, what: str) -> Exit:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Exit(207, f"{what}: permission denied")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Exit(213, f"{what}: no space left")
    return Exit(201, f"{what}: {exc.strerror}")


def main(run, argv: list[str]) -> int:
    try:
        run(argv)
    except Exit as exc:
        print(f"ERROR {exc.code} {exc}", file=sys.stderr)
        return exc.code
    return 0
