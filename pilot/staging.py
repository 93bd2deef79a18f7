"""Stage-in and stage-out: one transfer loop over a Direction, with movers, retries, fallback and codes.

Storage layout: a file lives at `<se><path>/<scope>/<lfn>` (no scope: `<se><path>/<lfn>`), where `path`
is the queue's `seprodpath` for production outputs, `sepath` for analysis outputs, and empty for inputs.

The loop (`Stager.transfer`), per file, in a small thread pool (`transfer_threads`):
- skip what the journal already has (a resumed job);
- stage-in: the `before_get` hooks may serve the file (the node cache: outcome `from_cache`); else the
  direct-access decision (outcome `direct`, the mover's TURL); else the queue's movers in order
  (`copytoolsin`/`copytools`, or the single `copytoolin`/`copytool`), each with its retries, the next one
  tried after a failure another mover could avoid; then the `after_get` hooks (after the final rename);
- stage-out: the output must be a regular file of the work dir (a link or special file is refused, never
  followed); a destination already holding a file is never overwritten: the same size and checksum count
  as `already_done`, anything else fails with 1221; the mover puts to a temporary name, verifies it by a
  remote stat and renames it;
- every file's outcome goes to the journal (outputs durably, before the step is reported).
Stage-in also writes the input manifest the payload reads (`INPUT_MANIFEST`, and a PoolFileCatalog.xml
when an input is read directly).

Hooks (`StagingHooks`): `before_get(item) -> Optional[TransferResult]` is asked first for each input (an
answer ends that file: its outcome, usually `from_cache`, is recorded); `after_get(item, path)` is called
with the final local path after a copy. A hook's exception is logged and ignored: a cache never fails a job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol
from xml.sax.saxutils import quoteattr

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.filestager import hand_over
from pilot.fsutil import UntrustedFile, atomic_write, open_untrusted
from pilot.job import FileSpec, Job
from pilot.journal import Journal
from pilot.layout import FILESTAGER_LIST, INPUT_MANIFEST, POOL_FILE_CATALOG
from pilot.traces import Tracer
from sitemovers.base import (
    Direction,
    Expected,
    Failure,
    MoverSettings,
    Outcome,
    RemoteFile,
    SiteMover,
    TransferError,
    TransferResult,
    same_file,
)
from sitemovers.checksum import Checksum, file_checksum
from sitemovers.registry import Registry, UnknownMover

log = logging.getLogger(__name__)

NOT_DIRECT = (".tar.gz", ".lib.tgz", ".tgz", ".tar")  # archives are always copied (and `.raw.` files)

CODES: dict[Direction, dict[Failure, ErrorCode]] = {
    Direction.IN: {
        Failure.NOT_FOUND: ErrorCode.REPLICA_NOT_FOUND,
        Failure.SIZE_MISMATCH: ErrorCode.GET_SIZE_MISMATCH,
        Failure.NO_SPACE: ErrorCode.NO_LOCAL_SPACE,
        Failure.TIMEOUT: ErrorCode.LOOPING_STAGEIN,
        Failure.AUTH: ErrorCode.STAGEIN_AUTH,
        Failure.SETUP: ErrorCode.SETUP_FAILURE,
    },
    Direction.OUT: {
        Failure.SIZE_MISMATCH: ErrorCode.PUT_SIZE_MISMATCH,
        Failure.NO_SPACE: ErrorCode.NO_REMOTE_SPACE,
        Failure.TIMEOUT: ErrorCode.LOOPING_STAGEOUT,
        Failure.AUTH: ErrorCode.STAGEOUT_AUTH,
        Failure.EXISTS: ErrorCode.FILE_EXISTS,
        Failure.SETUP: ErrorCode.SETUP_FAILURE,
        Failure.CATALOG: ErrorCode.CATALOG_REGISTRATION,
    },
}
CHECKSUM_CODES = {
    (Direction.IN, "adler32"): ErrorCode.GET_ADLER32_MISMATCH,
    (Direction.IN, "md5"): ErrorCode.GET_MD5_MISMATCH,
    (Direction.OUT, "adler32"): ErrorCode.PUT_ADLER32_MISMATCH,
    (Direction.OUT, "md5"): ErrorCode.PUT_MD5_MISMATCH,
}
FAILED = {Direction.IN: ErrorCode.STAGEIN_FAILED, Direction.OUT: ErrorCode.STAGEOUT_FAILED}


def error_code(direction: Direction | str, exc: TransferError) -> ErrorCode:
    direction = Direction(direction)
    if exc.failure is Failure.CHECKSUM_MISMATCH:
        return CHECKSUM_CODES[(direction, exc.checksum_kind or "adler32")]
    return CODES[direction].get(exc.failure, FAILED[direction])


@dataclass
class Transferred:
    lfn: str
    fsize: int
    checksum: Optional[Checksum]
    location: str  # local path (in), SURL (out), TURL (direct)
    outcome: Outcome = Outcome.COPIED


@dataclass
class StageItem:
    """One file of one transfer: what the hooks see."""

    spec: FileSpec
    source: str  # in: the storage URL; out: the local path
    dest: str  # in: the local path; out: the storage URL
    expected: Expected


class StagingHooks(Protocol):
    def before_get(self, item: StageItem) -> Optional[TransferResult]: ...

    def after_get(self, item: StageItem, path: Path) -> None: ...


class Stager:
    def __init__(
        self,
        queue: QueueConfig,
        registry: Registry,
        cancel: threading.Event,
        sleep: Callable[[float], Any] = time.sleep,
        hooks: Sequence[StagingHooks] = (),
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.cancel = cancel
        self.sleep = sleep
        self.hooks = list(hooks)
        self.tracer = Tracer(queue.name, queue.trace_url)

    # --- movers and URLs ------------------------------------------------------------------------------
    def movers(self, direction: Direction) -> list[SiteMover]:
        """The queue's movers for a direction, in order (the first is the primary)."""
        queue = self.queue
        setup = (queue.copysetupin or queue.copysetup) if direction is Direction.IN else queue.copysetup
        settings = MoverSettings(setup=setup, prefix_rewrites=queue.rewrites(direction.value),
                                 space_token=queue.setokens,
                                 options={**{f.name: getattr(queue, f.name) for f in dataclasses.fields(queue)
                                             if f.name != "extra"}, **queue.extra})
        movers = []
        for name in queue.movers(direction.value) or ["local"]:
            try:
                movers.append(self.registry.create(name, settings))
            except UnknownMover as exc:
                raise PilotError(ErrorCode.UNKNOWN_COPYTOOL, str(exc)) from None
        return movers

    def url(self, spec: FileSpec, path: str = "") -> str:
        if not self.queue.se:
            raise PilotError(ErrorCode.STAGEIN_FAILED if spec.kind == "input" else ErrorCode.STAGEOUT_FAILED,
                             f"queue {self.queue.name} has no storage endpoint (se)")
        # Names go in as they are (checked: no separators, no '..'); a mover whose protocol needs
        # quoting quotes them itself, after its prefix rewrites.
        parts = [self.queue.se.rstrip("/"), path.strip("/"), spec.scope, spec.lfn]
        return "/".join(part for part in parts if part)

    # --- the two directions -------------------------------------------------------------------------
    def stage_in(self, job: Job, workdir: Path, journal: Journal) -> list[Transferred]:
        todo = [spec for spec in job.inputs if not journal.file_info("in", spec.lfn)]
        self.tracer.job(job.panda_id, job.is_analysis)
        pending = {spec.lfn for spec in todo}
        items = [StageItem(spec, self.url(spec) if spec.lfn in pending else "", str(workdir / spec.lfn),
                           Expected(spec.fsize, spec.checksum, spec.guid, spec.lfn)) for spec in job.inputs]
        # The file stager (queue `filestager`): inputs are left remote like direct access, and their TURLs
        # and the mover are handed to the payload, which fetches them one ahead (pilot/filestager.py).
        direct = self.queue.filestager or wants_direct(job, self.queue)
        done = self.transfer(Direction.IN, items, journal, direct=direct)
        write_manifest(workdir, job, done)
        if self.queue.filestager:
            hand_over(workdir / FILESTAGER_LIST, done, self.movers(Direction.IN))
        return done

    def stage_out(self, job: Job, files: list[tuple[FileSpec, Path]], journal: Journal) -> list[Transferred]:
        path = self.queue.sepath if job.is_analysis else self.queue.seprodpath
        self.tracer.job(job.panda_id, job.is_analysis)
        items = []
        for spec, local in files:
            dest = self.url(spec, path) if not journal.file_info("out", spec.lfn) else ""
            items.append(StageItem(spec, str(local), dest, Expected(None, None, spec.guid, spec.lfn)))
        return self.transfer(Direction.OUT, items, journal)

    # --- the one loop ---------------------------------------------------------------------------------
    def transfer(self, direction: Direction, items: list[StageItem], journal: Journal,
                 direct: bool = False) -> list[Transferred]:
        """Move every item not yet in the journal; results in the items' order. The first failure (in
        that order) is raised as a PilotError once the files already under way have ended."""
        results: list[Optional[Transferred]] = [None] * len(items)
        todo = []
        for index, item in enumerate(items):
            info = journal.file_info(direction.value, item.spec.lfn)
            if info is not None:
                results[index] = _transferred(item.spec.lfn, info)
            else:
                todo.append(index)
        if not todo:
            return [r for r in results if r is not None]
        movers = self.movers(direction)
        if direction is Direction.IN:
            self._prepare(movers[0], [items[i] for i in todo])
        failed = threading.Event()

        def one(index: int) -> Optional[Transferred]:
            if failed.is_set():
                return None  # another file failed: start no new transfer
            try:
                done = self._one(direction, items[index], movers, journal, direct)
            except BaseException:
                failed.set()
                raise
            return done

        threads = min(max(1, self.queue.transfer_threads), len(todo))
        if threads == 1:
            outcomes = [_call(one, index) for index in todo]
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"stage-{direction.value}") as pool:
                futures = [pool.submit(_call, one, index) for index in todo]
                outcomes = [future.result() for future in futures]
        for index, (value, error) in zip(todo, outcomes):
            if error is not None:
                raise error
            results[index] = value
        if direction is Direction.IN:
            journal.sync()
        return [r for r in results if r is not None]

    def _one(self, direction: Direction, item: StageItem, movers: list[SiteMover], journal: Journal,
             direct: bool) -> Transferred:
        lfn = item.spec.lfn
        result: Optional[TransferResult] = None
        if direction is Direction.IN:
            result = self._from_hooks(item)
            if result is None and direct and direct_allowed(item.spec):
                result = self._direct(item, movers)
        else:
            item.expected, identity = self._check_output(item)
        if result is None:
            with self.tracer.transfer(direction.value, item.spec, item.source if direction is Direction.IN
                                      else item.dest, movers[0].name):
                result = self._with_movers(direction, item, movers)
            if direction is Direction.IN and result.outcome is Outcome.COPIED:
                for hook in self.hooks:
                    _safely(hook.after_get, item, Path(result.location))
        if direction is Direction.OUT and checked_output(lfn, Path(item.source))[1] != identity:
            raise PilotError(ErrorCode.STAGEOUT_FAILED, f"output {lfn} was replaced during its transfer")
        info = {"fsize": result.fsize, "checksum": str(result.checksum or ""), "location": result.location,
                "outcome": result.outcome.value}
        if direction is Direction.OUT:
            info["guid"] = item.spec.guid
        journal.file_done(direction.value, lfn, durable=direction is Direction.OUT, **info)
        return _transferred(lfn, info)

    def _from_hooks(self, item: StageItem) -> Optional[TransferResult]:
        for hook in self.hooks:
            result = _safely(hook.before_get, item)
            if result is not None:
                log.info("stage-in %s: %s (%s)", item.spec.lfn, result.outcome.value, type(hook).__name__)
                return result
        return None

    def _direct(self, item: StageItem, movers: list[SiteMover]) -> Optional[TransferResult]:
        for mover in movers:
            if mover.direct_read:
                try:
                    turl = mover.turl(item.source)
                except TransferError as exc:
                    log.warning("no TURL for %s from %s: %s", item.spec.lfn, mover.name, exc.diag)
                    continue
                log.info("stage-in %s: direct access %s (%s)", item.spec.lfn, turl, mover.name)
                self.tracer.send(self.tracer.new("in", item.spec, turl, mover.name).finish("FOUND_ROOT"))
                return TransferResult(turl, item.spec.fsize or 0, item.spec.checksum, Outcome.DIRECT)
        return None

    def _with_movers(self, direction: Direction, item: StageItem, movers: list[SiteMover]) -> TransferResult:
        for position, mover in enumerate(movers):
            try:
                return self._attempts(direction, item, mover)
            except TransferError as exc:
                last = position == len(movers) - 1
                if last or not exc.failure.another_mover_may_help or self.cancel.is_set():
                    raise PilotError(error_code(direction, exc), exc.diag) from None
                log.warning("%s %s with %s failed (%s), trying %s", direction.value, item.spec.lfn, mover.name,
                            exc.diag, movers[position + 1].name)
        raise AssertionError("unreachable")

    def _attempts(self, direction: Direction, item: StageItem, mover: SiteMover) -> TransferResult:
        retries = max(1, self.queue.stagein_retries if direction is Direction.IN else self.queue.stageout_retries)
        for attempt in range(1, retries + 1):
            if self.cancel.is_set():
                raise TransferError(Failure.CANCELLED, "transfer interrupted")
            try:
                if direction is Direction.IN:
                    log.info("stage-in %s <- %s (%s)", item.spec.lfn, item.source, mover.name)
                    return mover.get(item.source, Path(item.dest), item.expected, self.cancel)
                existing = self._existing(mover, item)
                if existing is not None:
                    return existing
                log.info("stage-out %s -> %s (%s)", item.spec.lfn, item.dest, mover.name)
                return mover.put(Path(item.source), item.dest, item.expected, self.cancel)
            except TransferError as exc:
                if not exc.failure.retryable or attempt == retries:
                    raise
                log.warning("%s %s attempt %d/%d failed: %s", direction.value, item.spec.lfn, attempt, retries,
                            exc.diag)
                self.sleep(self.queue.transfer_retry_wait)
        raise AssertionError("unreachable")

    def _existing(self, mover: SiteMover, item: StageItem) -> Optional[TransferResult]:
        """A destination that already holds a file: the same one is done, another is never replaced."""
        try:
            remote = mover.stat(item.dest)
        except TransferError as exc:
            if exc.failure is Failure.UNSUPPORTED:
                return None  # the mover refuses a conflict itself
            raise
        if remote is None:
            return None
        kind = remote.checksum.kind if remote.checksum is not None else "adler32"
        local = RemoteFile(item.expected.fsize or 0, file_checksum(Path(item.source), kind))
        if same_file(local, remote):
            log.info("stage-out %s: %s already holds it (same size and checksum)", item.spec.lfn, item.dest)
            return TransferResult(item.dest, local.fsize, local.checksum, Outcome.ALREADY_DONE)
        raise TransferError(Failure.EXISTS, f"{item.spec.lfn}: {item.dest} already holds a different file "
                                            f"({remote.fsize} bytes, {remote.checksum or 'no checksum'}): not replaced")

    def _check_output(self, item: StageItem) -> tuple[Expected, tuple[int, int]]:
        """The output must be a regular, non-empty file of its own (`checked_output`): a link or a special
        file the payload planted is refused, never followed. Returns what to expect and its identity."""
        size, identity = checked_output(item.spec.lfn, Path(item.source))
        if size == 0:
            raise PilotError(ErrorCode.EMPTY_OUTPUT, f"output {item.spec.lfn} is empty")
        return Expected(size, None, item.spec.guid, item.spec.lfn), identity

    def _prepare(self, mover: SiteMover, items: list[StageItem]) -> None:
        """The two-phase contract: ask for every input at once, then poll until all are online."""
        if not mover.prepare_phase:
            return
        urls = [item.source for item in items]
        try:
            mover.prepare(urls)
            deadline = time.monotonic() + self.queue.prepare_timeout
            wait = 1.0
            while True:
                online = mover.poll(urls)
                pending = [url for url in urls if not online.get(url)]
                if not pending:
                    return
                if self.cancel.is_set():
                    raise PilotError(ErrorCode.STAGEIN_FAILED, "stage-in interrupted while inputs were prepared")
                if time.monotonic() >= deadline:
                    raise PilotError(ErrorCode.EXCEEDED_MAX_WAIT,
                                     f"{len(pending)} input(s) not online after {self.queue.prepare_timeout:.0f} s, "
                                     f"e.g. {pending[0]}")
                self.sleep(wait)
                wait = min(60.0, wait * 2)
        except TransferError as exc:
            raise PilotError(error_code(Direction.IN, exc), exc.diag) from None


def _call(function: Callable[[int], Optional[Transferred]],
          index: int) -> tuple[Optional[Transferred], Optional[PilotError]]:
    """A file's failure as a value, so that the files after it in the pool still end cleanly."""
    try:
        return function(index), None
    except PilotError as exc:
        return None, exc


def _safely(hook: Callable[..., Any], *args: Any) -> Any:
    try:
        return hook(*args)
    except Exception:  # noqa: BLE001 - a hook (the node cache) must never fail a transfer
        log.exception("staging hook %s failed; going on without it", getattr(hook, "__qualname__", hook))
        return None


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
    outcome = Outcome(info.get("outcome") or Outcome.COPIED.value)
    return Transferred(lfn, int(info["fsize"]), checksum, str(info["location"]), outcome)


# --- direct access and the input manifest -----------------------------------------------------------
def wants_direct(job: Job, queue: QueueConfig) -> bool:
    """The queue allows direct access and the job asks for it (transferType=direct or an access mode)."""
    if not queue.allowdirectaccess:
        return False
    words = job.job_pars.split()
    asked = "--accessmode=direct" in words or any(a == "--accessmode" and b == "direct"
                                                  for a, b in zip(words, words[1:]))
    return job.transfer_type.lower() == "direct" or asked


def direct_allowed(spec: FileSpec) -> bool:
    """A file the job does not forbid direct access to (prodDBlockToken=local), and not an archive."""
    name = spec.lfn.lower()
    return not spec.direct_access_forbidden and not name.endswith(NOT_DIRECT) and ".raw." not in name


def write_manifest(workdir: Path, job: Job, done: list[Transferred]) -> None:
    """`INPUT_MANIFEST` (JSON: per input its lfn, guid, scope, size, checksum, outcome, and `path` or
    `turl`), and a PoolFileCatalog.xml when an input is read directly. Written atomically before the
    payload starts (so no name of the payload's can be in the way)."""
    specs = {spec.lfn: spec for spec in job.inputs}
    files = []
    for item in done:
        spec = specs.get(item.lfn)
        entry: dict[str, Any] = {"lfn": item.lfn, "guid": spec.guid if spec else "",
                                 "scope": spec.scope if spec else "", "fsize": item.fsize,
                                 "checksum": str(item.checksum or ""), "outcome": item.outcome.value}
        entry["turl" if item.outcome is Outcome.DIRECT else "path"] = item.location
        files.append(entry)
    atomic_write(workdir / INPUT_MANIFEST, (json.dumps({"version": 1, "files": files}, indent=1) + "\n").encode())
    if any(item.outcome is Outcome.DIRECT for item in done):
        atomic_write(workdir / POOL_FILE_CATALOG, pool_file_catalog(files).encode())


def pool_file_catalog(files: list[dict[str, Any]]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8" standalone="no" ?>',
             '<!DOCTYPE POOLFILECATALOG SYSTEM "InMemory">', "<POOLFILECATALOG>"]
    for entry in files:
        pfn = entry.get("turl") or entry.get("path") or ""
        lines += [f"  <File ID={quoteattr(entry['guid'])}>",
                  f"    <physical><pfn filetype=\"ROOT_All\" name={quoteattr(pfn)}/></physical>",
                  f"    <logical><lfn name={quoteattr(entry['lfn'])}/></logical>",
                  "  </File>"]
    lines.append("</POOLFILECATALOG>")
    return "\n".join(lines) + "\n"


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
