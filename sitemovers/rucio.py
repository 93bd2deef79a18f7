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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from sitemovers.base import (
    Expected,
    Failure,
    Move,
    MoverSettings,
    RemoteFile,
    SiteMover,
    TransferError,
    TransferResult,
    new_token,
    raise_failure,
    verify,
)
from sitemovers.checksum import Checksum, ChecksumError, file_checksum
from sitemovers.command import run, timeout_for
from sitemovers.registry import Registry

UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
META_TIMEOUT = 120.0
UNDERLYING = {"root": "xrootd", "xroot": "xrootd", "file": "local", "davs": "gfal", "dav": "gfal",
              "https": "gfal", "http": "gfal"}  # an RSE protocol's scheme -> the mover that reaches it


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
    bulk = True  # many DIDs per download or upload call
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
            raise _failure_of(command, answer)
        return answer

    def _call_many(self, command: str, args: dict[str, Any], count: int, timeout: float,
                   cancel: Optional[threading.Event]) -> list[dict[str, Any] | TransferError]:
        """One call for `count` files: each file's answer, or its failure (a failed call fails them all)."""
        try:
            files = self._call(command, args, timeout, cancel).get("files")
        except TransferError as exc:
            return [exc] * count
        if not isinstance(files, list) or len(files) != count:
            return [TransferError(Failure.FAILED, f"rucio {command}: no answer for each file")] * count
        return [entry if entry.get("ok") else _failure_of(command, entry) for entry in files]

    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        return raise_failure(self.fetch_many([Move(source, str(tmp), expected)], cancel)[0])

    def fetch_many(self, moves: Sequence[Move],
                   cancel: Optional[threading.Event]) -> list[RemoteFile | TransferError]:
        """All the DIDs in one download call. The client writes <dir>/<name> (through its own temporary
        name): each file gets a private directory beside its final one, so that nothing appears under a
        name the payload could see; what landed is moved to the file's temporary name."""
        outcomes: list[Optional[RemoteFile | TransferError]] = [None] * len(moves)
        asked: list[tuple[int, dict[str, str], Path]] = []
        try:
            for index, move in enumerate(moves):
                try:
                    did = parse_did_url(self.rewrite(move.source))
                except TransferError as exc:
                    outcomes[index] = exc
                    continue
                box = Path(move.dest).with_name(Path(move.dest).name + ".d")
                box.mkdir(mode=0o700)
                asked.append((index, did, box))
            if asked:
                timeout = timeout_for(sum(moves[index].expected.fsize or 0 for index, _, _ in asked) or None)
                files = [{**did, "dir": str(box)} for _, did, box in asked]
                answers = self._call_many("download", {"files": files, "timeout": timeout}, len(asked),
                                          timeout + META_TIMEOUT, cancel)
                for (index, did, box), answer in zip(asked, answers):
                    outcomes[index] = answer if isinstance(answer, TransferError) else \
                        _landed(moves[index], did, box, answer)
        finally:
            for _, _, box in asked:
                shutil.rmtree(box, ignore_errors=True)
        return [outcome for outcome in outcomes if outcome is not None]

    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        raise TransferError(Failure.UNSUPPORTED, "rucio uploads through put()")

    def put(self, source: Path, destination: str, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        return raise_failure(self.put_many([Move(str(source), destination, expected)], cancel)[0])

    def put_many(self, moves: Sequence[Move],
                 cancel: Optional[threading.Event] = None) -> list[TransferResult | TransferError]:
        """All the files in one upload call: the client writes each to its own temporary name at the
        storage, verifies the checksum the storage reports and renames; with registration, the replicas
        are registered after the upload. A DID already at the RSE is never replaced (Failure.EXISTS)."""
        outcomes: list[Optional[TransferResult | TransferError]] = [None] * len(moves)
        sent: dict[int, RemoteFile] = {}
        files, boxes = [], []
        try:
            for index, move in enumerate(moves):
                try:
                    did = parse_did_url(self.rewrite(move.dest))
                    local = Path(move.source)
                    sent[index] = RemoteFile(local.stat().st_size, file_checksum(local))
                    verify(move.expected.lfn or move.dest, sent[index].fsize, sent[index].checksum, move.expected)
                except TransferError as exc:
                    outcomes[index] = exc
                    continue
                # The client names an upload after the local file: a private link with the DID's name.
                box = local.parent / f".rucio-{new_token()}.d"
                box.mkdir(mode=0o700)
                boxes.append(box)
                staged = box / did["name"]
                os.link(local, staged, follow_symlinks=False)  # the output itself, never what a link names
                guid = move.expected.guid if UUID.match(move.expected.guid) else ""  # rucio takes UUIDs only
                files.append((index, {**did, "path": str(staged), "guid": guid}))
            if files:
                timeout = timeout_for(sum(sent[index].fsize for index, _ in files))
                args = {"files": [entry for _, entry in files], "timeout": timeout,
                        "register": bool(self.settings.options.get("rucio_register"))}
                answers = self._call_many("upload", args, len(files), timeout + META_TIMEOUT, cancel)
                for (index, _), answer in zip(files, answers):
                    outcomes[index] = answer if isinstance(answer, TransferError) else \
                        _uploaded(moves[index].dest, sent[index], answer)
        finally:
            for box in boxes:
                shutil.rmtree(box, ignore_errors=True)
        return [outcome for outcome in outcomes if outcome is not None]

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

    def remove_partials(self, url: str) -> list[str]:
        """The RSE is reached through its protocol: the DID's PFN there, and the mover of that protocol
        lists and removes the pilot's partial files beside it. (The upload client's own temporary name,
        `<pfn>.rucio.upload`, is not the pilot's: the client removes it before its next upload.)"""
        pfn = str(self._call("pfn", parse_did_url(self.rewrite(url)), META_TIMEOUT)["pfn"])
        family = UNDERLYING.get(pfn.split("://", 1)[0].lower() if "://" in pfn else "")
        if family is None:
            raise TransferError(Failure.UNSUPPORTED, f"{pfn}: no mover lists this RSE's protocol")
        settings = MoverSettings(setup=self.settings.setup, options=self.settings.options)
        return Registry().create(family, settings).remove_partials(pfn)


def _failure_of(command: str, answer: dict[str, Any]) -> TransferError:
    try:
        failure = Failure(answer.get("failure", "failed"))
    except ValueError:
        failure = Failure.FAILED
    kind = "adler32" if failure is Failure.CHECKSUM_MISMATCH else ""
    return TransferError(failure, f"rucio {command}: {answer.get('diag', '')}", checksum_kind=kind)


def _landed(move: Move, did: dict[str, str], box: Path, answer: dict[str, Any]) -> RemoteFile | TransferError:
    """The downloaded file, moved from its private directory to the file's temporary name."""
    landed = box / did["name"]
    if Path(answer.get("path", "")) != landed or not landed.is_file() or landed.is_symlink():
        return TransferError(Failure.FAILED, f"rucio download: {did['name']} not where expected")
    os.replace(landed, move.dest)
    tmp = Path(move.dest)
    return RemoteFile(tmp.stat().st_size, _checksum(answer.get("adler32")) or file_checksum(tmp))


def _uploaded(destination: str, sent: RemoteFile, answer: dict[str, Any]) -> TransferResult | TransferError:
    """An upload checked against what was sent (size, and the adler32 the client verified at the storage)."""
    remote = _checksum(answer.get("adler32"))
    if answer.get("fsize") not in (None, sent.fsize):
        return TransferError(Failure.SIZE_MISMATCH, f"{destination}: uploaded {answer.get('fsize')}, sent {sent.fsize}")
    if remote is not None and remote != sent.checksum:
        return TransferError(Failure.CHECKSUM_MISMATCH, f"{destination}: {remote} uploaded, {sent.checksum} sent",
                             checksum_kind="adler32")
    return TransferResult(destination, sent.fsize, sent.checksum)


def _checksum(value: Any) -> Optional[Checksum]:
    try:
        return Checksum.parse(f"adler32:{value}") if value else None
    except ChecksumError:
        return None
