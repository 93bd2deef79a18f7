"""The xrootd mover: `xrdcp` and `xrdfs` (XRootD's own client tools) against root:// storage.

Every tool runs through the shared command runner (sitemovers/command.py): argv lists, the queue's
`copysetup` sourced first when there is one, a timeout scaled by the file size, the process group
killed on cancel or timeout. The checksum is adler32 computed by the server (`xrdfs query checksum`):
a get is verified by xrdcp against the expected value (or the server's), a put by xrdcp against the
local file and then by the remote stat of the staging layer. Names are passed literally (the tools take
paths as they are); a name with '?' cannot be carried by a root:// URL and is refused.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

from sitemovers.base import Expected, Failure, RemoteFile, SiteMover, TransferError
from sitemovers.checksum import Checksum, ChecksumError, file_checksum
from sitemovers.command import Completed, classify_default, run, timeout_for

META_TIMEOUT = 120.0  # s for stat, checksum query, rename, remove (the client may stall ~5 s on exit)
# XRootD's client retries a lost server 5 times over up to 10 minutes by default; the pilot retries whole
# transfers itself (stagein_retries/stageout_retries), so its movers fail fast unless the site says otherwise.
# In-process (gfal2), the client's fork handlers would run in every process the pilot forks afterwards and
# can leave the child stuck before its exec: they are off (the pilot's children never use the client).
CLIENT_DEFAULTS = {"XRD_CONNECTIONRETRY": "1", "XRD_CONNECTIONWINDOW": "30", "XRD_RUNFORKHANDLER": "0"}


def client_env() -> dict[str, str]:
    return {**CLIENT_DEFAULTS, **os.environ}


def classify(returncode: int, text: str) -> Failure:
    lowered = text.lower()
    if "checksum" in lowered and ("error" in lowered or "mismatch" in lowered):
        return Failure.CHECKSUM_MISMATCH
    if "[3010]" in text or "not authorized" in lowered or "read-only file system" in lowered:
        return Failure.AUTH
    if "[3011]" in text:
        return Failure.NOT_FOUND
    if "[3018]" in text:
        return Failure.EXISTS
    return classify_default(returncode, text)


def split_root_url(url: str) -> tuple[str, str]:
    """root://host:port//abs/path -> ('root://host:port', '/abs/path')."""
    if not url.startswith(("root://", "xroot://")):
        raise TransferError(Failure.UNSUPPORTED, f"{url}: the xrootd mover needs a root:// URL")
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if not host or not slash or not path:
        raise TransferError(Failure.FAILED, f"{url}: no host or path")
    if "?" in path:
        raise TransferError(Failure.UNSUPPORTED, f"{url}: '?' in a name cannot travel in a root:// URL")
    return f"{scheme}://{host}", "/" + path.lstrip("/")


class XRootDSiteMover(SiteMover):
    name = "xrootd"
    schemes = ("root", "xroot")
    direct_read = True
    server_checksum = True

    def _run(self, argv: list[str], timeout: float, cancel: Optional[threading.Event] = None,
             ok: tuple[int, ...] = (0,)) -> Completed:
        return run(argv, setup=self.settings.setup, timeout=self.settings.timeout or timeout,
                   cancel=cancel, classify=classify, ok=ok, env=client_env())

    def _url(self, url: str) -> str:
        server, path = split_root_url(self.rewrite(url))
        return f"{server}/{path}"

    def _xrdfs(self, url: str, *command: str, ok: tuple[int, ...] = (0,)) -> Completed:
        server, path = split_root_url(self.rewrite(url))
        return self._run(["xrdfs", server, *command, path], META_TIMEOUT, ok=ok)

    # --- the primitives -----------------------------------------------------------------------------
    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        # xrdcp checks the copy against the server's adler32 (the transfer is intact); what landed is then
        # verified against the job's size and checksum, size first (a truncated source is a size mismatch).
        self._run(["xrdcp", "--nopbar", "--silent", "--force", "--cksum", "adler32:source", self._url(source),
                   str(tmp)], timeout_for(expected.fsize), cancel)
        return RemoteFile(tmp.stat().st_size, file_checksum(tmp))

    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        size = Path(source).stat().st_size
        local = file_checksum(Path(source))  # one local pass; xrdcp then checks the destination against it
        self._run(["xrdcp", "--nopbar", "--silent", "--force", "--posc", "--cksum", f"adler32:{local.value}",
                   str(source), self._url(tmp_url)], timeout_for(size), cancel)
        return RemoteFile(size, local)

    def stat(self, url: str) -> Optional[RemoteFile]:
        done = self._xrdfs(url, "stat", ok=(0, 54))
        if done.returncode == 54 or "[3011]" in done.stderr:
            return None
        size = None
        for line in done.stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Size":
                size = int(value.strip())
        if size is None:
            raise TransferError(Failure.FAILED, f"{url}: xrdfs stat gave no size")
        return RemoteFile(size, self._server_checksum(url))

    def _server_checksum(self, url: str) -> Optional[Checksum]:
        words = self._xrdfs(url, "query", "checksum").stdout.split()
        if len(words) >= 2 and words[0].lower() == "adler32":
            try:
                return Checksum.parse(f"adler32:{words[1]}")
            except ChecksumError:
                return None
        return None

    def remove(self, url: str) -> None:
        try:
            self._xrdfs(url, "rm")
        except TransferError as exc:
            if exc.failure is not Failure.NOT_FOUND:
                raise

    def _rename(self, src_url: str, dst_url: str) -> None:
        server, src_path = split_root_url(self.rewrite(src_url))
        dst_server, dst_path = split_root_url(self.rewrite(dst_url))
        if dst_server != server:
            raise TransferError(Failure.UNSUPPORTED, f"{src_url} -> {dst_url}: rename across servers")
        self._run(["xrdfs", server, "mv", src_path, dst_path], META_TIMEOUT)

    def listdir(self, dir_url: str) -> list[str]:
        """`xrdfs ls` prints each entry's full path, one a line (names with a newline cannot be told
        apart: they are never a partial name of ours and are left alone)."""
        try:
            done = self._xrdfs(dir_url, "ls")
        except TransferError as exc:
            if exc.failure is Failure.NOT_FOUND:
                return []
            raise
        return [line.rpartition("/")[2] for line in done.stdout.splitlines() if line.strip()]

    def turl(self, url: str) -> str:
        return self._url(url)
