"""The gfal mover: the gfal2 library through its Python bindings, for root://, dav(s):// and file:// storage.

gfal2 checks ADLER32 itself on every copy (source and destination, against the expected value when the
job gives one). The bindings come from the operating system (Debian `python3-gfal2`, EL `python3-gfal2`),
with the gfal2 plugins of the protocols used (`gfal2-plugin-xrootd`, `gfal2-plugin-http`,
`gfal2-plugin-file`). When the pilot's interpreter cannot `import gfal2` (a venv, a zipapp), the
compiled module alone is loaded from the system's directory (`gfal2_path` in the queue, else the
distribution's usual places), never the rest of that directory. The module must have been built for the
pilot's Python minor version.

Names travel as they are. Where a protocol decodes percent-escapes (XRootD's client inside gfal2 decodes
both its root:// and its local file:// URLs; HTTP decodes request paths) the mover escapes them; a name
with '?' cannot be carried by root:// (it starts the opaque part) nor by XRootD's http, and is refused.
"""

from __future__ import annotations

import errno
import functools
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from sitemovers.base import Expected, Failure, RemoteFile, SiteMover, TransferError
from sitemovers.checksum import Checksum, ChecksumError
from sitemovers.command import classify_default, timeout_for
from sitemovers.xrootd import CLIENT_DEFAULTS

SEARCH = ("/usr/lib/python3/dist-packages", f"/usr/lib64/python3.{sys.version_info[1]}/site-packages",
          f"/usr/lib/python3.{sys.version_info[1]}/site-packages")
HTTP_SCHEMES = ("dav", "davs", "http", "https")

ERRNO_FAILURES = {
    errno.ENOENT: Failure.NOT_FOUND,
    errno.EACCES: Failure.AUTH,
    errno.EPERM: Failure.AUTH,
    errno.EROFS: Failure.AUTH,
    errno.ENOSPC: Failure.NO_SPACE,
    errno.EDQUOT: Failure.NO_SPACE,
    errno.ETIMEDOUT: Failure.TIMEOUT,
    errno.ECANCELED: Failure.CANCELLED,
    errno.EEXIST: Failure.EXISTS,
    errno.EPROTONOSUPPORT: Failure.UNSUPPORTED,
}


@functools.cache
def load_gfal2(extra: str = "") -> ModuleType:
    """The gfal2 module: importable as it is, or the compiled module alone from a system directory."""
    for key, value in CLIENT_DEFAULTS.items():  # before gfal2 starts XRootD's client in this process
        os.environ.setdefault(key, value)
    try:
        import gfal2  # type: ignore[import-not-found]

        return gfal2
    except ImportError:
        pass
    for directory in ([extra] if extra else []) + list(SEARCH):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(directory) / f"gfal2{suffix}"
            if path.is_file():
                spec = importlib.util.spec_from_file_location("gfal2", path)
                if spec is None or spec.loader is None:
                    continue
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
    raise TransferError(Failure.UNSUPPORTED, "gfal2 Python bindings not found for Python "
                                             f"{sys.version_info[0]}.{sys.version_info[1]}: install python3-gfal2 "
                                             "or set the queue's gfal2_path")


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def wire_url(url: str, local_peer: bool = False) -> str:
    """The URL as gfal2 must be given it so that the storage sees the name as it is."""
    scheme = scheme_of(url)
    if not scheme:
        raise TransferError(Failure.UNSUPPORTED, f"{url}: the gfal mover needs a URL")
    head, _, path = url.partition("://")
    host, slash, rest = path.partition("/")
    if scheme == "root":
        if "?" in rest:
            raise TransferError(Failure.UNSUPPORTED, f"{url}: '?' in a name cannot travel in a root:// URL")
        return f"{head}://{host}{slash}{rest.replace('%', '%25')}"
    if scheme in HTTP_SCHEMES:
        if "?" in rest:  # XrdHttp takes it as the query even escaped (checksum and rename requests)
            raise TransferError(Failure.UNSUPPORTED, f"{url}: '?' in a name cannot travel in an http URL here")
        return f"{head}://{host}{slash}{urllib.parse.quote(rest, safe='/')}"
    if scheme == "file" and local_peer:
        return url.replace("%", "%25")
    return url


def local_url(path: Path, peer: str) -> str:
    """A local file as gfal2 should see it when copying to or from `peer`."""
    url = f"file://{Path(path).resolve()}"
    return url.replace("%", "%25") if scheme_of(peer) == "root" else url


def failure_of(exc: Exception) -> TransferError:
    code = getattr(exc, "code", 0)
    message = " ".join(str(getattr(exc, "message", exc)).split())[:300]
    lowered = message.lower()
    if "checksum" in lowered and any(word in lowered for word in ("mismatch", "do not match", "differ", "error")):
        return TransferError(Failure.CHECKSUM_MISMATCH, f"gfal2: {message}", checksum_kind="adler32")
    if "permission" in lowered or "http 403" in lowered:  # davix reports a 403 as EEXIST
        return TransferError(Failure.AUTH, f"gfal2: {message}")
    failure = ERRNO_FAILURES.get(code) or classify_default(1, message)
    if "operation canceled" in lowered or "cancel" in lowered and code == errno.ECANCELED:
        failure = Failure.CANCELLED
    return TransferError(failure, f"gfal2: {message}")


class GfalSiteMover(SiteMover):
    name = "gfal"
    schemes = ("root", "dav", "davs", "http", "https", "file")
    direct_read = True
    server_checksum = True

    def _gfal(self) -> ModuleType:
        return load_gfal2(str(self.settings.options.get("gfal2_path") or ""))

    @contextmanager
    def _context(self, cancel: Optional[threading.Event] = None, timeout: float = 0.0) -> Iterator[Any]:
        """A gfal2 context for one operation. A set `cancel`, or `timeout` seconds passing (gfal2's own
        transfer timeout does not cover a client stuck reconnecting), cancels what it is doing."""
        if cancel is not None and cancel.is_set():
            raise TransferError(Failure.CANCELLED, "transfer interrupted")
        gfal2 = self._gfal()
        ctx = gfal2.creat_context()
        done, why = threading.Event(), []
        deadline = time.monotonic() + timeout if timeout else None

        def watch() -> None:
            while not done.wait(0.05):
                if cancel is not None and cancel.is_set():
                    why.append(Failure.CANCELLED)
                elif deadline is not None and time.monotonic() >= deadline:
                    why.append(Failure.TIMEOUT)
                if why:
                    ctx.cancel()
                    return

        watcher = threading.Thread(target=watch, daemon=True) if cancel is not None or deadline else None
        if watcher is not None:
            watcher.start()
        try:
            yield ctx
        except gfal2.GError as exc:
            if why:
                what = "interrupted" if why[0] is Failure.CANCELLED else f"timed out after {timeout:.0f} s"
                raise TransferError(why[0], f"gfal2 transfer {what}") from None
            raise failure_of(exc) from None
        finally:
            done.set()
            if watcher is not None:
                watcher.join()

    def _params(self, ctx: Any, fsize: Optional[int], checksum: Optional[Checksum]) -> Any:
        gfal2 = self._gfal()
        params = ctx.transfer_parameters()
        params.overwrite = True  # only ever onto our own temporary name
        params.create_parent = True
        params.timeout = int(self._timeout(fsize))
        value = checksum.value if checksum is not None and checksum.kind == "adler32" else ""
        params.set_checksum(gfal2.checksum_mode.both, "ADLER32", value)
        return params

    def _timeout(self, fsize: Optional[int]) -> float:
        return self.settings.timeout or timeout_for(fsize)

    def _copy(self, source: str, dest: str, fsize: Optional[int], checksum: Optional[Checksum],
              cancel: Optional[threading.Event]) -> None:
        with self._context(cancel, self._timeout(fsize) + 30.0) as ctx:  # gfal2's own timeout first
            ctx.filecopy(self._params(ctx, fsize, checksum), source, dest)

    # --- the primitives -----------------------------------------------------------------------------
    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        # gfal2 checks the copy against the source's ADLER32 (the transfer is intact); what landed is then
        # verified against the job's size and checksum, size first (a truncated source is a size mismatch).
        remote = wire_url(self.rewrite(source))
        self._copy(remote, local_url(tmp, remote), expected.fsize, None, cancel)
        return RemoteFile(tmp.stat().st_size, self._checksum(local_url(tmp, ""), None))

    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        remote = wire_url(self.rewrite(tmp_url))
        self._copy(local_url(source, remote), remote, expected.fsize, expected.checksum, cancel)
        return RemoteFile(Path(source).stat().st_size, self._checksum(local_url(source, ""), expected.checksum))

    def _checksum(self, url: str, known: Optional[Checksum]) -> Checksum:
        """gfal2 verified the copy's ADLER32: the expected value when there was one, else ask again."""
        if known is not None and known.kind == "adler32":
            return known
        with self._context() as ctx:
            return Checksum("adler32", str(ctx.checksum(url, "ADLER32")).lower().zfill(8))

    def stat(self, url: str) -> Optional[RemoteFile]:
        wire = wire_url(self.rewrite(url))
        try:
            with self._context() as ctx:
                size = int(ctx.stat(wire).st_size)
                value = str(ctx.checksum(wire, "ADLER32"))
        except TransferError as exc:
            if exc.failure is Failure.NOT_FOUND:
                return None
            raise
        try:
            checksum: Optional[Checksum] = Checksum.parse(f"adler32:{value}")
        except ChecksumError:
            checksum = None
        return RemoteFile(size, checksum)

    def remove(self, url: str) -> None:
        try:
            with self._context() as ctx:
                ctx.unlink(wire_url(self.rewrite(url)))
        except TransferError as exc:
            if exc.failure is not Failure.NOT_FOUND:
                raise

    def _rename(self, src_url: str, dst_url: str) -> None:
        source, dest = wire_url(self.rewrite(src_url)), wire_url(self.rewrite(dst_url))
        if scheme_of(dest) in HTTP_SCHEMES:
            dest = self.rewrite(dst_url)  # the MOVE Destination is taken literally by the server
        with self._context() as ctx:
            ctx.rename(source, dest)

    def listdir(self, dir_url: str) -> list[str]:
        try:
            with self._context() as ctx:
                names = ctx.listdir(wire_url(self.rewrite(dir_url)))
        except TransferError as exc:
            if exc.failure is Failure.NOT_FOUND:
                return []
            raise
        return [urllib.parse.unquote(n) if scheme_of(dir_url) in HTTP_SCHEMES else n for n in names]

    def turl(self, url: str) -> str:
        rewritten = self.rewrite(url)
        if scheme_of(rewritten) not in ("root", *HTTP_SCHEMES):
            raise TransferError(Failure.UNSUPPORTED, f"{url}: no remote read for this scheme")
        return wire_url(rewritten)
