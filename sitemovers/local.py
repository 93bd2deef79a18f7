"""The local families: a directory storage element reached as a file system (`local`), and the
site-command protocol `lsm-get` / `lsm-put` (`lsm`).

`local` keeps each file's adler32 in an extended attribute written with the file (`user.adler32`,
`<checksum>:<size>:<mtime_ns>`), the way XRootD and dCache keep theirs: `stat` reports it as the storage's
checksum, and computes it from the content for a file that has none (or a stale one).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Optional

from sitemovers.base import (
    Expected,
    Failure,
    Outcome,
    RemoteFile,
    SiteMover,
    TransferError,
    TransferResult,
    verify,
)
from sitemovers.checksum import Cancelled, Checksum, ChecksumError, copy_with_checksum, file_checksum
from sitemovers.command import run, timeout_for

XATTR = "user.adler32"


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
            raise TransferError(Failure.UNSUPPORTED, f"{url}: not a local file URL")
    if not path_part.startswith("/"):
        raise TransferError(Failure.UNSUPPORTED, f"{url}: the local mover needs an absolute path or file:// URL")
    path = Path(path_part)
    if ".." in path.parts:
        raise TransferError(Failure.FAILED, f"{url}: '..' in a storage path")
    return path


def os_failure(exc: OSError, what: str) -> TransferError:
    """An OSError of a local file operation as a typed failure with a one-line diagnostic."""
    kind = {
        errno.ENOENT: Failure.NOT_FOUND,
        errno.ENOSPC: Failure.NO_SPACE,
        errno.EDQUOT: Failure.NO_SPACE,
        errno.EACCES: Failure.AUTH,
        errno.EPERM: Failure.AUTH,
        errno.EROFS: Failure.AUTH,
        errno.EEXIST: Failure.EXISTS,
    }.get(exc.errno or 0, Failure.FAILED)
    return TransferError(kind, f"{what}: {exc.strerror or exc}")


def record_checksum(path: Path, checksum: Checksum) -> None:
    """Keep the checksum with the file (best effort: a file system without user xattrs computes it)."""
    try:
        info = os.stat(path)
        os.setxattr(path, XATTR, f"{checksum.value}:{info.st_size}:{info.st_mtime_ns}".encode(),
                    follow_symlinks=False)
    except OSError:
        pass


def stored_checksum(path: Path, info: os.stat_result) -> Optional[Checksum]:
    try:
        value, size, mtime = os.getxattr(path, XATTR, follow_symlinks=False).decode().split(":")
        if int(size) == info.st_size and int(mtime) == info.st_mtime_ns:
            return Checksum.parse(f"ad:{value}")
    except (OSError, ValueError, ChecksumError):
        pass
    return None


class LocalSiteMover(SiteMover):
    """Copy (or, where the queue sets `link_inputs`, hard-link) files of a directory SE."""

    name = "local"
    schemes = ("file", "")
    direct_read = True  # a payload on a node that mounts the storage reads the file where it is
    server_checksum = True
    rename_noreplace = True  # published by a hard link, which never replaces a file

    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        src = local_path(self.rewrite(source))
        want = expected.checksum.kind if expected.checksum is not None else "adler32"
        if self.settings.options.get("link_inputs"):
            try:
                os.link(src, tmp, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise os_failure(exc, str(src)) from None
            else:
                return RemoteFile(os.stat(tmp).st_size, file_checksum(tmp, want))
        return self._copy(src, tmp, want, cancel, durable=False)

    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        target = local_path(self.rewrite(tmp_url))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_failure(exc, f"cannot create {target.parent}") from None
        sent = self._copy(source, target, "adler32", cancel, durable=True)
        if sent.checksum is not None:
            record_checksum(target, sent.checksum)
        return sent

    def _copy(self, src: Path, dst: Path, kind: str, cancel: Optional[threading.Event],
              durable: bool) -> RemoteFile:
        try:
            hasher = copy_with_checksum(src, dst, md5=kind == "md5", cancel=cancel, durable=durable)
        except Cancelled as exc:
            raise TransferError(Failure.CANCELLED, str(exc)) from None
        except OSError as exc:
            failure = os_failure(exc, f"{src} -> {dst.parent}")
            if failure.failure is Failure.NOT_FOUND and exc.filename != str(src):
                failure.failure = Failure.FAILED  # the destination's directory is missing, not the file
            raise failure from None
        return RemoteFile(hasher.size, hasher.result(kind))

    def stat(self, url: str) -> Optional[RemoteFile]:
        path = local_path(self.rewrite(url))
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_failure(exc, str(path)) from None
        if not os.path.isfile(path) or os.path.islink(path):
            raise TransferError(Failure.EXISTS, f"{path}: not a regular file")
        checksum = stored_checksum(path, info)
        if checksum is None:
            try:
                checksum = file_checksum(path)
            except OSError as exc:
                raise os_failure(exc, str(path)) from None
            record_checksum(path, checksum)
        return RemoteFile(info.st_size, checksum)

    def remove(self, url: str) -> None:
        try:
            os.unlink(local_path(self.rewrite(url)))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_failure(exc, url) from None

    def _rename(self, src_url: str, dst_url: str) -> None:
        """A hard link never replaces a file (EEXIST): the publication is atomic and never overwrites."""
        src, dst = local_path(self.rewrite(src_url)), local_path(self.rewrite(dst_url))
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise TransferError(Failure.EXISTS, f"{dst}: a file is already there") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                raise os_failure(exc, str(dst)) from None
            _rename_noreplace(src, dst)
            return
        os.unlink(src)
        _fsync_dir(dst.parent)

    def listdir(self, dir_url: str) -> list[str]:
        try:
            return os.listdir(local_path(self.rewrite(dir_url)))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise os_failure(exc, dir_url) from None

    def turl(self, url: str) -> str:
        """The file's path on the mounted storage (POSIX direct access)."""
        return str(local_path(self.rewrite(url)))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """For file systems without hard links: check, then rename (a narrow race, documented)."""
    if os.path.lexists(dst):
        raise TransferError(Failure.EXISTS, f"{dst}: a file is already there")
    os.rename(src, dst)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the site-command protocol -----------------------------------------------------------------------
# lsm-get / lsm-put exit codes (the site script verifies size and checksum itself)
LSM_CODES = {
    200: Failure.FAILED, 201: Failure.FAILED, 202: Failure.UNSUPPORTED, 203: Failure.UNSUPPORTED,
    204: Failure.SIZE_MISMATCH, 205: Failure.CHECKSUM_MISMATCH, 206: Failure.NOT_FOUND, 207: Failure.AUTH,
    208: Failure.FAILED, 209: Failure.SIZE_MISMATCH, 210: Failure.CHECKSUM_MISMATCH, 211: Failure.EXISTS,
    213: Failure.NO_SPACE, 220: Failure.FAILED,
}
LSM_SAME_FILE = 212  # lsm-put: the destination already holds this very file


def lsm_classify(returncode: int, stderr: str) -> Failure:
    if returncode == 200 and "does not exist" in stderr.lower():
        return Failure.NOT_FOUND  # the generic code, with the protocol's "Source file does not exist"
    if returncode in LSM_CODES:
        return LSM_CODES[returncode]
    return Failure.UNSUPPORTED if returncode in (126, 127) else Failure.FAILED


class LsmSiteMover(SiteMover):
    """The site's own `lsm-get [--size N] [--checksum adler32:X] [--guid G] SRC DEST` and `lsm-put ... SRC
    SURL` (on PATH, or the queue's copysetup puts them there). The scripts verify; their exit codes tell
    what failed. lsm-put publishes itself (the protocol has no rename), so `put` is overridden: exit 212
    (same file already there) is already_done, 211 (a different file) a failure."""

    name = "lsm"
    schemes = ("srm", "root", "file", "")
    needs_setup = True
    rename_noreplace = True  # no rename at all: lsm-put publishes (and refuses a different file) itself

    def _options(self, expected: Expected) -> list[str]:
        options = []
        if expected.fsize is not None:
            options += ["--size", str(expected.fsize)]
        if expected.checksum is not None:
            options += ["--checksum", f"{expected.checksum.kind}:{expected.checksum.value}"]
        if expected.guid:
            options += ["--guid", expected.guid]
        return options

    def _run(self, tool: str, expected: Expected, src: str, dst: str,
             cancel: Optional[threading.Event]) -> int:
        try:
            completed = run([tool, *self._options(expected), src, dst], setup=self.settings.setup,
                            timeout=self.settings.timeout or timeout_for(expected.fsize), cancel=cancel,
                            classify=lsm_classify, ok=(0, LSM_SAME_FILE) if tool == "lsm-put" else (0,))
        except TransferError as exc:
            if exc.failure is Failure.CHECKSUM_MISMATCH and expected.checksum is not None:
                exc.checksum_kind = expected.checksum.kind  # the script checked the kind it was given
            raise
        return completed.returncode

    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        self._run("lsm-get", expected, self.rewrite(source), str(tmp), cancel)
        try:
            info = os.stat(tmp, follow_symlinks=False)
            kind = expected.checksum.kind if expected.checksum is not None else "adler32"
            return RemoteFile(info.st_size, file_checksum(tmp, kind))
        except OSError as exc:
            raise TransferError(Failure.FAILED, f"lsm-get left no file: {exc.strerror}") from None

    def put(self, source: Path, destination: str, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        checksum = file_checksum(Path(source))
        size = os.stat(source).st_size
        verify(expected.lfn or str(source), size, checksum, expected)
        wanted = Expected(size, checksum, expected.guid, expected.lfn)
        code = self._run("lsm-put", wanted, str(source), self.rewrite(destination), cancel)
        outcome = Outcome.ALREADY_DONE if code == LSM_SAME_FILE else Outcome.COPIED
        return TransferResult(destination, size, checksum, outcome=outcome)

    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        raise TransferError(Failure.UNSUPPORTED, "lsm-put publishes by itself")  # put() is overridden

    def stat(self, url: str) -> Optional[RemoteFile]:
        """The protocol has no stat: lsm-put itself refuses a different file (211) or reports the same
        one (212)."""
        raise TransferError(Failure.UNSUPPORTED, "lsm has no stat command")

    def remove(self, url: str) -> None:
        run(["lsm-rm", self.rewrite(url)], setup=self.settings.setup, timeout=120.0,
            classify=lsm_classify)

    def _rename(self, src_url: str, dst_url: str) -> None:
        raise TransferError(Failure.UNSUPPORTED, "lsm has no rename")

