# STAND-IN support for the CASTOR and LFC command stand-ins of this directory (both systems no longer exist).
"""The stand-in CASTOR: a name space (the tape copy) and a disk pool per service class, under
$CASTOR_STANDIN_ROOT; the stand-in LFC: one JSON entry per LFN under $LFC_STANDIN_ROOT.

    $CASTOR_STANDIN_ROOT/ns/<castor path>                 the file as migrated to tape
    $CASTOR_STANDIN_ROOT/pool/<svcclass>/<castor path>    its copy on the disk pool of a service class
    $CASTOR_STANDIN_ROOT/recall/<svcclass>/<castor path>  a pending recall (stager_get); the next
                                                          stager_qry completes it

rfcp reads a /castor/ path only from the disk pool of $STAGE_SVCCLASS (default `default`): a file not
staged there fails with EBUSY ("Device or resource busy"), as a file must be recalled (stager_get, then
stager_qry until STAGED) first. A write lands in the name space and on the pool of $STAGE_SVCCLASS.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import zlib


def die(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def root() -> str:
    value = os.environ.get("CASTOR_STANDIN_ROOT", "")
    if not value:
        die("CASTOR_STANDIN_ROOT is not set (the stand-in CASTOR's directory)", 2)
    return value


def is_castor(path: str) -> bool:
    return path.startswith("/castor/")


def checked(path: str) -> str:
    if not path.startswith("/") or "/../" in f"{path}/" or "\0" in path:
        die(f"{path}: Invalid argument", 1)
    return path.lstrip("/")


def ns(path: str) -> str:
    return os.path.join(root(), "ns", checked(path))


def svcclass(args: list[str]) -> str:
    if "-S" in args:
        return args[args.index("-S") + 1]
    return os.environ.get("STAGE_SVCCLASS") or "default"


def pool(path: str, svc: str) -> str:
    return os.path.join(root(), "pool", svc, checked(path))


def recall(path: str, svc: str) -> str:
    return os.path.join(root(), "recall", svc, checked(path))


def adler32(path: str) -> str:
    value = 1
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def oserror(exc: OSError, what: str) -> None:
    die(f"{what}: {os.strerror(exc.errno or errno.EIO)}", 1)


def copy_file(src: str, dst: str) -> int:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst, follow_symlinks=False)
    return os.path.getsize(dst)
