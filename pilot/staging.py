"""Stage-in and stage-out: which mover, where a file lives, retries, checks, and error codes.

Storage layout: a file lives at `<se><path>/<scope>/<lfn>` (no scope: `<se><path>/<lfn>`), where `path`
is the queue's `seprodpath` for production outputs, `sepath` for analysis outputs, and empty for inputs.
Every transferred file is recorded in the job journal, so a resumed job skips what is already done.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.fsutil import UntrustedFile, open_untrusted
from pilot.job import FileSpec, Job
from pilot.journal import Journal
from sitemovers.base import Expected, Failure, MoverSettings, SiteMover, TransferError
from sitemovers.checksum import Checksum
from sitemovers.registry import Registry, UnknownMover

log = logging.getLogger(__name__)

GET_CODES = {
    Failure.NOT_FOUND: ErrorCode.REPLICA_NOT_FOUND,
    Failure.SIZE_MISMATCH: ErrorCode.GET_SIZE_MISMATCH,
    Failure.NO_SPACE: ErrorCode.NO_LOCAL_SPACE,
    Failure.TIMEOUT: ErrorCode.LOOPING_STAGEIN,
}
PUT_CODES = {
    Failure.SIZE_MISMATCH: ErrorCode.PUT_SIZE_MISMATCH,
    Failure.TIMEOUT: ErrorCode.LOOPING_STAGEOUT,
}
CHECKSUM_CODES = {
    ("in", "adler32"): ErrorCode.GET_ADLER32_MISMATCH,
    ("in", "md5"): ErrorCode.GET_MD5_MISMATCH,
    ("out", "adler32"): ErrorCode.PUT_ADLER32_MISMATCH,
    ("out", "md5"): ErrorCode.PUT_MD5_MISMATCH,
}


def error_code(direction: str, exc: TransferError) -> ErrorCode:
    if exc.failure is Failure.CHECKSUM_MISMATCH:
        return CHECKSUM_CODES[(direction, exc.checksum_kind or "adler32")]
    table = GET_CODES if direction == "in" else PUT_CODES
    return table.get(exc.failure, ErrorCode.STAGEIN_FAILED if direction == "in" else ErrorCode.STAGEOUT_FAILED)


@dataclass
class Transferred:
    lfn: str
    fsize: int
    checksum: Optional[Checksum]
    location: str  # local path (in) or SURL (out)


class Stager:
    def __init__(
        self,
        queue: QueueConfig,
        registry: Registry,
        cancel: threading.Event,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.cancel = cancel
        self.sleep = sleep

    def _mover(self, direction: str) -> SiteMover:
        name = self.queue.stagein_mover if direction == "in" else self.queue.copytool
        setup = (self.queue.copysetupin or self.queue.copysetup) if direction == "in" else self.queue.copysetup
        settings = MoverSettings(setup=setup, prefix_rewrites=self.queue.rewrites(direction),
                                 space_token=self.queue.setokens)
        try:
            return self.registry.create(name, settings)
        except UnknownMover as exc:
            raise PilotError(ErrorCode.UNKNOWN_COPYTOOL, str(exc)) from None

    def url(self, spec: FileSpec, path: str = "") -> str:
        if not self.queue.se:
            raise PilotError(ErrorCode.STAGEIN_FAILED if spec.kind == "input" else ErrorCode.STAGEOUT_FAILED,
                             f"queue {self.queue.name} has no storage endpoint (se)")
        # Names go in as they are (checked: no separators, no '..'); a mover whose protocol needs
        # quoting quotes them itself, after its prefix rewrites.
        parts = [self.queue.se.rstrip("/"), path.strip("/"), spec.scope, spec.lfn]
        return "/".join(part for part in parts if part)

    def _attempts(self, direction: str, lfn: str, transfer: Callable[[], Any]) -> Any:
        retries = max(1, self.queue.stagein_retries if direction == "in" else self.queue.stageout_retries)
        for attempt in range(1, retries + 1):
            if self.cancel.is_set():
                raise TransferError(Failure.CANCELLED, "transfer interrupted")
            try:
                return transfer()
            except TransferError as exc:
                if not exc.failure.retryable or attempt == retries:
                    raise
                log.warning("%s %s attempt %d/%d failed: %s", direction, lfn, attempt, retries, exc.diag)
                self.sleep(self.queue.transfer_retry_wait)
        raise AssertionError("unreachable")

    def stage_in(self, job: Job, workdir: Path, journal: Journal) -> list[Transferred]:
        todo = [spec for spec in job.inputs if not journal.file_info("in", spec.lfn)]
        mover = self._mover("in") if todo else None
        done = []
        for spec in job.inputs:
            info = journal.file_info("in", spec.lfn)
            if info is None:
                assert mover is not None
                source = self.url(spec)
                expected = Expected(spec.fsize, spec.checksum, spec.guid)
                dest = workdir / spec.lfn
                log.info("stage-in %s <- %s (%s)", spec.lfn, source, mover.name)
                try:
                    result = self._attempts("in", spec.lfn, partial(mover.get, source, dest, expected, self.cancel))
                except TransferError as exc:
                    raise PilotError(error_code("in", exc), exc.diag) from None
                info = {"fsize": result.fsize, "checksum": str(result.checksum or ""), "location": str(dest)}
                journal.file_done("in", spec.lfn, **info)
            done.append(_transferred(spec.lfn, info))
        return done

    def stage_out(self, job: Job, files: list[tuple[FileSpec, Path]], journal: Journal) -> list[Transferred]:
        path = self.queue.sepath if job.is_analysis else self.queue.seprodpath
        mover: Optional[SiteMover] = None
        done = []
        for spec, local in files:
            info = journal.file_info("out", spec.lfn)
            if info is None:
                size, inode = checked_output(spec.lfn, local)
                if size == 0:
                    raise PilotError(ErrorCode.EMPTY_OUTPUT, f"output {spec.lfn} is empty")
                mover = mover or self._mover("out")
                destination = self.url(spec, path)
                expected = Expected(size, None, spec.guid)
                log.info("stage-out %s -> %s (%s)", spec.lfn, destination, mover.name)
                try:
                    result = self._attempts("out", spec.lfn,
                                            partial(mover.put, local, destination, expected, self.cancel))
                except TransferError as exc:
                    raise PilotError(error_code("out", exc), exc.diag) from None
                if checked_output(spec.lfn, local)[1] != inode:
                    raise PilotError(ErrorCode.STAGEOUT_FAILED, f"output {spec.lfn} was replaced during its transfer")
                info = {"fsize": result.fsize, "checksum": str(result.checksum or ""), "location": result.location,
                        "guid": spec.guid}
                journal.file_done("out", spec.lfn, **info)
            done.append(_transferred(spec.lfn, info))
        return done


def checked_output(lfn: str, local: Path) -> tuple[int, tuple[int, int]]:
    """Size and identity of an output the payload made: a regular file of its own, not a symbolic link
    (to the pilot's proxy, say), not a hard link, not a FIFO or device. Anything else fails the output."""
    try:
        fd = open_untrusted(local)
    except FileNotFoundError:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} was not produced") from None
    except UntrustedFile as exc:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} {exc.strerror}: not shipped") from None
    except OSError as exc:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_nlink > 1:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} is a hard link to another file: not shipped")
    return st.st_size, (st.st_dev, st.st_ino)


def _transferred(lfn: str, info: dict[str, Any]) -> Transferred:
    checksum = Checksum.parse(info["checksum"]) if info.get("checksum") else None
    return Transferred(lfn, int(info["fsize"]), checksum, str(info["location"]))


def output_report(job: Job, files: list[Transferred]) -> dict[str, dict[str, Any]]:
    """{lfn: {guid, fsize, adler32 | md5sum, surl}}, as the server's job_output_report wants it."""
    guids = {spec.lfn: spec.guid for spec in job.all_outputs}
    report = {}
    for item in files:
        entry: dict[str, Any] = {"guid": guids.get(item.lfn, ""), "fsize": item.fsize, "surl": item.location}
        if item.checksum is not None:
            entry["adler32" if item.checksum.kind == "adler32" else "md5sum"] = item.checksum.value
        report[item.lfn] = entry
    return report
