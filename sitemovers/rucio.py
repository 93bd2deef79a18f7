"""The rucio mover (also `dq2`, the name of its predecessor): the rucio-clients API, as a site has it.

Storage URLs name an RSE and a DID: `rucio://RSE/scope/name` (for outputs, a path between the RSE and
the scope is ignored: the RSE's own lfn2pfn algorithm places the file). Inputs are downloaded by DID
with the adler32 of the catalogue verified by the client; outputs are uploaded without registration
(as production pilots do: the server registers them), or registered when the queue sets
`rucio_register: true`.

The client is not imported into the pilot: rucio-clients pins its own requests/urllib3 and lives in the
site's environment (its setup script, `copysetup`, puts it on PATH with its RUCIO_CONFIG or RUCIO_HOME).
Each operation runs `python3 -c <the source of rucio_call.py> ...` (`rucio_python` in the queue names
another interpreter) through the shared command runner, so the setup script, the timeout and the kill on
cancel are those of every command-line mover, and the answer is one line of JSON. The source is read as
package data (`pkgutil.get_data`), so the mover works from the one-file bundle as from a checkout.
"""

from __future__ import annotations

import functools
import json
import os
import pkgutil
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Optional

from sitemovers.base import Expected, Failure, RemoteFile, SiteMover, TransferError, TransferResult, new_token
from sitemovers.checksum import Checksum, ChecksumError, file_checksum
from sitemovers.command import run, timeout_for

UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
META_TIMEOUT = 120.0


@functools.cache
def helper_source() -> str:
    """The source of sitemovers/rucio_call.py, wherever the package lives (a directory, a zip archive)."""
    data = pkgutil.get_data("sitemovers", "rucio_call.py")
    if data is None:
        raise TransferError(Failure.SETUP, "sitemovers/rucio_call.py is missing from this installation")
    return data.decode()


def parse_did_url(url: str) -> dict[str, str]:
    """rucio://RSE/[path/]scope/name -> {'rse', 'scope', 'name'}."""
    if not url.startswith("rucio://"):
        raise TransferError(Failure.UNSUPPORTED, f"{url}: the rucio mover needs a rucio://RSE/scope/name URL")
    rse, _, path = url[len("rucio://"):].partition("/")
    parts = [part for part in path.split("/") if part]
    if len(parts) < 2:
        raise TransferError(Failure.FAILED, f"{url}: no scope and name")
    return {"rse": rse, "scope": parts[-2], "name": parts[-1]}


class RucioSiteMover(SiteMover):
    name = "rucio"
    schemes = ("rucio",)
    direct_read = True
    server_checksum = True
    needs_setup = True
    rename_noreplace = True  # no rename of its own: the upload client publishes (put() is overridden)

    def _call(self, command: str, args: dict[str, Any], timeout: float,
              cancel: Optional[threading.Event] = None) -> dict[str, Any]:
        python = str(self.settings.options.get("rucio_python") or "python3")
        try:
            done = run([python, "-c", helper_source(), command, json.dumps(args)], setup=self.settings.setup,
                       timeout=self.settings.timeout or timeout, cancel=cancel, ok=(0, 1))
        except TransferError as exc:
            raise TransferError(exc.failure, f"rucio {command}: {exc.diag}") from None
        lines = done.stdout.strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if lines else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict) or "ok" not in answer:
            tail = (done.stderr.strip().splitlines() or ["no answer"])[-1][:300]
            raise TransferError(Failure.FAILED, f"rucio {command}: {tail}")
        if not answer["ok"]:
            try:
                failure = Failure(answer.get("failure", "failed"))
            except ValueError:
                failure = Failure.FAILED
            kind = "adler32" if failure is Failure.CHECKSUM_MISMATCH else ""
            raise TransferError(failure, f"rucio {command}: {answer.get('diag', '')}", checksum_kind=kind)
        return answer

    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        did = parse_did_url(self.rewrite(source))
        # The client writes <dir>/<name> (through its own temporary name): a private directory beside
        # the final file, so that nothing appears under a name the payload could see.
        box = tmp.with_name(tmp.name + ".d")
        box.mkdir(mode=0o700)
        try:
            answer = self._call("download", {**did, "dir": str(box), "timeout": timeout_for(expected.fsize)},
                                timeout_for(expected.fsize) + META_TIMEOUT, cancel)
            landed = box / did["name"]
            if Path(answer.get("path", "")) != landed or not landed.is_file() or landed.is_symlink():
                raise TransferError(Failure.FAILED, f"rucio download: {did['name']} not where expected")
            os.replace(landed, tmp)
        finally:
            shutil.rmtree(box, ignore_errors=True)
        return RemoteFile(tmp.stat().st_size, _checksum(answer.get("adler32")) or file_checksum(tmp))

    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        raise TransferError(Failure.UNSUPPORTED, "rucio uploads through put()")

    def put(self, source: Path, destination: str, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        """One upload: the client writes to its own temporary name at the storage, verifies the checksum
        the storage reports and renames; with registration, the replica is registered after the upload."""
        did = parse_did_url(self.rewrite(destination))
        size = Path(source).stat().st_size
        local = file_checksum(Path(source))
        # The client names the upload after the local file: hand it a private link with the DID's name.
        box = Path(source).parent / f".rucio-{new_token()}.d"
        box.mkdir(mode=0o700)
        try:
            staged = box / did["name"]
            os.link(source, staged, follow_symlinks=False)  # the output itself, never what a link names
            guid = expected.guid if UUID.match(expected.guid) else ""  # rucio takes UUIDs only
            answer = self._call("upload", {**did, "path": str(staged), "guid": guid,
                                           "register": bool(self.settings.options.get("rucio_register")),
                                           "timeout": timeout_for(size)},
                                timeout_for(size) + META_TIMEOUT, cancel)
        finally:
            shutil.rmtree(box, ignore_errors=True)
        remote = _checksum(answer.get("adler32"))
        if answer.get("fsize") not in (None, size):
            raise TransferError(Failure.SIZE_MISMATCH, f"{destination}: uploaded {answer.get('fsize')}, sent {size}")
        if remote is not None and remote != local:
            raise TransferError(Failure.CHECKSUM_MISMATCH, f"{destination}: {remote} uploaded, {local} sent",
                                checksum_kind="adler32")
        return TransferResult(destination, size, local)

    def stat(self, url: str) -> Optional[RemoteFile]:
        answer = self._call("stat", parse_did_url(self.rewrite(url)), META_TIMEOUT)
        if not answer.get("exists"):
            return None
        return RemoteFile(int(answer.get("fsize") or 0), _checksum(answer.get("adler32")))

    def remove(self, url: str) -> None:
        self._call("remove", parse_did_url(self.rewrite(url)), META_TIMEOUT)

    def _rename(self, src_url: str, dst_url: str) -> None:
        raise TransferError(Failure.UNSUPPORTED, "rucio renames inside its own upload")

    def turl(self, url: str) -> str:
        return str(self._call("turl", parse_did_url(self.rewrite(url)), META_TIMEOUT)["pfn"])


def _checksum(value: Any) -> Optional[Checksum]:
    try:
        return Checksum.parse(f"adler32:{value}") if value else None
    except ChecksumError:
        return None
