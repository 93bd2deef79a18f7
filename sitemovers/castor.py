"""CASTOR families: `castor` (rfcp with the stager's prepare phase and service classes) and `rfcp`
(the same copies, with each output registered in an LFC file catalogue).

CASTOR and the LFC exist nowhere any more: the tests run these movers against the stand-in commands of
tests/standins/ (each honours the real tool's command line and exit status). Commands used:
`rfcp SRC DST`, `rfmkdir -p DIR`, `nsls -l --checksum PATH`, `rfrm PATH`, `rfrename OLD NEW`,
`stager_get -M PATH -S CLASS`, `stager_qry -M PATH -S CLASS` (STAGED / STAGEIN), `lfc-mkdir -p DIR`,
`lcg-rf -g GUID -l lfn:PATH SURL`.

Queue settings (by name, MoverSettings.options): `castor_svcclass` — `prefix^class` pairs, comma-separated:
the service class of a path is the class of its longest matching prefix, else each class of
`castor_svcclasses` (comma-separated; default `default`) is tried in turn until one has the file
STAGED; `castor_stage_host` (STAGE_HOST); `lfchost` (LFC_HOST), `lfcpath` (default /grid/atlas).
The tools run with STAGE_SVCCLASS, STAGE_HOST and RFIO_USE_CASTOR_V2=YES set.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Optional

from sitemovers.base import Expected, Failure, RemoteFile, SiteMover, TransferError, TransferResult
from sitemovers.checksum import Checksum, ChecksumError, file_checksum
from sitemovers.command import Completed, classify_default, run, timeout_for

_CHECKSUM = re.compile(r"\sAD\s+([0-9a-fA-F]{1,8})\s")


def castor_path(url: str) -> str:
    """rfio://host//castor/x, castor:///castor/x or /castor/x -> /castor/x (nothing that climbs)."""
    path = url
    for scheme in ("rfio:", "castor:"):
        if path.startswith(scheme):
            path = path[len(scheme):]
            if path.startswith("//"):
                path = "/" + path[2:].partition("/")[2].lstrip("/")
    if not path.startswith("/castor/"):
        raise TransferError(Failure.UNSUPPORTED, f"{url}: not a CASTOR path")
    if ".." in path.split("/"):
        raise TransferError(Failure.FAILED, f"{url}: '..' in a storage path")
    return path


def classify(returncode: int, text: str) -> Failure:
    if "device or resource busy" in text.lower():
        return Failure.FAILED  # not staged: a later attempt (after a recall) may succeed
    return classify_default(returncode, text)


class CastorSiteMover(SiteMover):
    name = "castor"
    schemes = ("rfio", "castor", "")
    server_checksum = True
    needs_setup = True
    prepare_phase = True

    # --- settings -----------------------------------------------------------------------------------
    def _option(self, key: str, default: str = "") -> str:
        value = self.settings.options.get(key)
        return str(value) if value not in (None, "") else default

    def classes_for(self, path: str) -> list[str]:
        """The service class chosen by the path's longest matching prefix, else every class in turn."""
        best = ""
        chosen = ""
        for pair in self._option("castor_svcclass").split(","):
            prefix, sep, svc = pair.strip().partition("^")
            if sep and path.startswith(prefix) and len(prefix) > len(best):
                best, chosen = prefix, svc.strip()
        if chosen:
            return [chosen]
        return [c.strip() for c in self._option("castor_svcclasses", "default").split(",") if c.strip()]

    def _env(self, svc: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(STAGE_SVCCLASS=svc, RFIO_USE_CASTOR_V2="YES")
        if self._option("castor_stage_host"):
            env["STAGE_HOST"] = self._option("castor_stage_host")
        if self._option("lfchost"):
            env["LFC_HOST"] = self._option("lfchost")
        return env

    def _run(self, argv: list[str], svc: str = "default", size: Optional[int] = None,
             cancel: Optional[threading.Event] = None, timeout: float = 0.0) -> Completed:
        return run(argv, setup=self.settings.setup, env=self._env(svc), cancel=cancel, classify=classify,
                   timeout=self.settings.timeout or timeout or timeout_for(size))

    # --- the prepare phase ---------------------------------------------------------------------------
    def prepare(self, urls: list[str]) -> None:
        for url in urls:
            path = castor_path(self.rewrite(url))
            self._run(["stager_get", "-M", path, "-S", self.classes_for(path)[0]], timeout=300)

    def poll(self, urls: list[str]) -> dict[str, bool]:
        return {url: self._staged_class(castor_path(self.rewrite(url))) is not None for url in urls}

    def _staged_class(self, path: str) -> Optional[str]:
        for svc in self.classes_for(path):
            done = self._run(["stager_qry", "-M", path, "-S", svc], svc, timeout=300)
            if re.search(r"\sSTAGED\s*$", done.stdout, re.M):
                return svc
        return None

    # --- primitives ----------------------------------------------------------------------------------
    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        path = castor_path(self.rewrite(source))
        svc = self._staged_class(path)
        if svc is None:
            if self.stat(source) is None:
                raise TransferError(Failure.NOT_FOUND, f"{path}: No such file or directory")
            raise TransferError(Failure.FAILED, f"{path}: not staged in service class "
                                                f"{', '.join(self.classes_for(path))} (recall it first)")
        self._run(["rfcp", path, str(tmp)], svc, expected.fsize, cancel)
        kind = expected.checksum.kind if expected.checksum is not None else "adler32"
        try:
            return RemoteFile(os.stat(tmp).st_size, file_checksum(tmp, kind))
        except OSError as exc:
            raise TransferError(Failure.FAILED, f"rfcp left no file: {exc.strerror}") from None

    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        path = castor_path(self.rewrite(tmp_url))
        svc = self.classes_for(path)[0]
        local = RemoteFile(os.stat(source).st_size, file_checksum(source))
        self._run(["rfmkdir", "-p", path.rsplit("/", 1)[0]], svc, timeout=300)
        self._run(["rfcp", str(source), path], svc, local.fsize, cancel)
        return local

    def stat(self, url: str) -> Optional[RemoteFile]:
        path = castor_path(self.rewrite(url))
        try:
            done = self._run(["nsls", "-l", "--checksum", path], timeout=300)
        except TransferError as exc:
            if exc.failure is Failure.NOT_FOUND:
                return None
            raise
        fields = done.stdout.split()
        if len(fields) < 5 or not fields[4].isdigit():
            raise TransferError(Failure.FAILED, f"nsls: unreadable answer for {path}")
        if done.stdout.startswith("d"):
            raise TransferError(Failure.EXISTS, f"{path}: a directory")
        match = _CHECKSUM.search(done.stdout)
        checksum = None
        if match:
            try:
                checksum = Checksum.parse(f"ad:{match.group(1)}")
            except ChecksumError:
                checksum = None
        return RemoteFile(int(fields[4]), checksum)

    def remove(self, url: str) -> None:
        try:
            self._run(["rfrm", castor_path(self.rewrite(url))], timeout=300)
        except TransferError as exc:
            if exc.failure is not Failure.NOT_FOUND:
                raise

    def _rename(self, src_url: str, dst_url: str) -> None:
        self._run(["rfrename", castor_path(self.rewrite(src_url)), castor_path(self.rewrite(dst_url))], timeout=300)


class RfcpLfcSiteMover(CastorSiteMover):
    """rfcp to CASTOR (or DPM), then the replica registered in the LFC: `lfc-mkdir -p` of the LFN's
    directory and `lcg-rf -g GUID -l lfn:<lfcpath>/<dir>/<lfn> SURL` (the catalogue records size and
    checksum as the storage reports them). A registration failure is Failure.CATALOG (1169)."""

    name = "rfcp"

    def put(self, source: Path, destination: str, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        if not expected.guid:
            raise TransferError(Failure.CATALOG, f"{destination}: no GUID to register the replica with")
        result = super().put(source, destination, expected, cancel)
        path = castor_path(self.rewrite(destination))
        parent, name = path.rsplit("/", 1)
        directory = f"{self._option('lfcpath', '/grid/atlas').rstrip('/')}/{parent.rsplit('/', 1)[-1]}"
        try:
            self._run(["lfc-mkdir", "-p", directory], timeout=300)
            self._run(["lcg-rf", "-g", expected.guid, "-l", f"lfn:{directory}/{expected.lfn or name}", path],
                      timeout=300)
        except TransferError as exc:
            raise TransferError(Failure.CATALOG, f"LFC registration of {path}: {exc.diag}") from None
        return result
