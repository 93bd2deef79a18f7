"""Stage-in and stage-out: one transfer loop over a Direction, with movers, retries, fallback and codes.

Storage layout: a file lives at `<se><path>/<scope>/<lfn>` (no scope: `<se><path>/<lfn>`), where `path`
is the queue's `seprodpath` for production outputs, `sepath` for analysis outputs, and empty for inputs.

The loop (`Stager.transfer`), per file, in a small thread pool (`transfer_threads`), in three steps:
- `_start`: skip what the journal already has (a resumed job); stage-in: the `before_get` hooks may
  serve the file (the node cache: outcome `from_cache`), else the direct-access decision (outcome
  `direct`, the mover's TURL); stage-out: the output must be a regular file of the work dir (a link or
  special file is refused, never followed);
- `_copy`: the queue's movers in order (`copytoolsin`/`copytools`, or the single `copytoolin`/`copytool`),
  each with its retries, the next one tried after a failure another mover could avoid; a destination
  already holding a file is never overwritten: the same size and checksum count as `already_done`,
  anything else fails with 1221; the mover puts to a temporary name, verifies it by a remote stat and
  renames it;
- `_finish`: the `after_get` hooks (after the final rename), and the file's outcome in the journal
  (outputs durably, before the step is reported).
A `bulk` mover (the first of the list) gets all the files that need a copy in one call (`get_many` /
`put_many`) between the first and the last step: a file it moved is finished as any other, a file it
could not move goes through `_copy` with that failure as its first attempt. Outcomes, traces and journal
events stay per file.
Stage-in also writes the input manifest the payload reads (pilot/inputmanifest.py).

Hooks (`StagingHooks`): `before_get(item) -> Optional[TransferResult]` is asked first for each input (an
answer ends that file: its outcome, usually `from_cache`, is recorded); `after_get(item, path)` is called
with the final local path after a copy. A hook's exception is logged and ignored: a cache never fails a job.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.filestager import hand_over
from pilot.inputmanifest import direct_allowed, wants_direct, write_manifest
from pilot.job import FileSpec, Job
from pilot.journal import Journal
from pilot.layout import FILESTAGER_LIST
from pilot.outputfiles import checked_output, output_report
from pilot.stagecodes import error_code
from pilot.stageitems import StageItem, StagingHooks, Transferred, from_journal, journal_info
from pilot.stageprepare import prepare_inputs
from pilot.traces import Tracer
from sitemovers.base import (
    Direction,
    Expected,
    Failure,
    Move,
    MoverSettings,
    Outcome,
    RemoteFile,
    SiteMover,
    TransferError,
    TransferResult,
    same_file,
)
from sitemovers.checksum import file_checksum
from sitemovers.registry import Registry, UnknownMover

__all__ = ["Stager", "StageItem", "StagingHooks", "Transferred", "error_code", "output_report"]

log = logging.getLogger(__name__)
Attempt = Optional["TransferResult | TransferError"]  # what a bulk call did for a file, if it had it


@dataclass
class Started:
    """A file after `_start`: its result when no copy is needed, and an output's identity."""

    result: Optional[TransferResult] = None
    identity: Optional[tuple[int, int]] = None


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
                results[index] = from_journal(item.spec.lfn, info)
            else:
                todo.append(index)
        if not todo:
            return [r for r in results if r is not None]
        movers = self.movers(direction)
        if direction is Direction.IN:
            prepare_inputs(movers[0], [items[i].source for i in todo], self.queue.prepare_timeout, self.cancel,
                           self.sleep)
        threads = min(max(1, self.queue.transfer_threads), len(todo))
        failed = threading.Event()

        def guarded(work: Callable[[int], Any], finishing: Callable[[int], bool] = lambda index: False):
            def run(index: int) -> Any:
                if failed.is_set() and not finishing(index):
                    return None  # another file failed: start no new transfer
                try:
                    return work(index)
                except BaseException:
                    failed.set()
                    raise
            return run

        def each(work: Callable[[int], Any], indexes: list[int]) -> dict[int, tuple[Any, Optional[PilotError]]]:
            return dict(zip(indexes, _each(work, indexes, threads, f"stage-{direction.value}")))

        if movers[0].bulk and len(todo) > 1:
            # start each file, one call of the bulk mover for those that need a copy, then finish each
            # (a file the bulk call moved is finished even after another file failed: it is in storage)
            started = each(guarded(lambda i: self._start(direction, items[i], movers, direct)), todo)
            ready = [i for i in todo if started[i][0] is not None]
            to_copy = [i for i in ready if started[i][0].result is None]
            firsts = {} if failed.is_set() else \
                dict(zip(to_copy, self._bulk(direction, [items[i] for i in to_copy], movers[0])))
            outcomes = {i: started[i] for i in todo if started[i][0] is None}
            outcomes.update(each(guarded(lambda i: self._one(direction, items[i], movers, journal, started[i][0],
                                                             firsts.get(i)),
                                         finishing=lambda i: isinstance(firsts.get(i), TransferResult)), ready))
        else:
            outcomes = each(guarded(lambda i: self._one(direction, items[i], movers, journal,
                                                        self._start(direction, items[i], movers, direct))), todo)
        for index in todo:
            value, error = outcomes[index]
            if error is not None:
                raise error
            results[index] = value
        if direction is Direction.IN:
            journal.sync()
        return [r for r in results if r is not None]

    def _one(self, direction: Direction, item: StageItem, movers: list[SiteMover], journal: Journal,
             started: Started, first: Attempt = None) -> Transferred:
        result = started.result if started.result is not None else self._copy(direction, item, movers, first)
        return self._finish(direction, item, result, started, journal)

    def _start(self, direction: Direction, item: StageItem, movers: list[SiteMover], direct: bool) -> Started:
        if direction is Direction.OUT:
            item.expected, identity = self._check_output(item)
            return Started(identity=identity)
        result = self._from_hooks(item)
        if result is None and direct and direct_allowed(item.spec):
            result = self._direct(item, movers)
        return Started(result)

    def _bulk(self, direction: Direction, items: list[StageItem], mover: SiteMover) -> list[Attempt]:
        """One call of a bulk mover for all these files: each file's result or failure (None: not tried,
        the transfer was interrupted), with a trace each."""
        if not items or self.cancel.is_set():
            return [None] * len(items)
        log.info("%s of %d files in one call (%s)", direction.value, len(items), mover.name)
        traces = [self.tracer.new(direction.value, item.spec, _remote(direction, item), mover.name) for item in items]
        moves = [Move(item.source, item.dest, item.expected) for item in items]
        try:
            done = (mover.get_many if direction is Direction.IN else mover.put_many)(moves, self.cancel)
        except TransferError as exc:  # the call as a whole: each file then goes on alone
            done = [exc] * len(items)
        for trace, outcome in zip(traces, done):
            self.tracer.send(trace.finish("FAILED", outcome.diag) if isinstance(outcome, TransferError)
                             else trace.finish("DONE"))
        return list(done)

    def _copy(self, direction: Direction, item: StageItem, movers: list[SiteMover], first: Attempt) -> TransferResult:
        """The file moved by the movers, or what a bulk call did for it: a failure is its first attempt."""
        if isinstance(first, TransferResult):
            return first
        with self.tracer.transfer(direction.value, item.spec, _remote(direction, item), movers[0].name):
            return self._with_movers(direction, item, movers, first)

    def _finish(self, direction: Direction, item: StageItem, result: TransferResult, started: Started,
                journal: Journal) -> Transferred:
        lfn = item.spec.lfn
        if direction is Direction.IN and result.outcome is Outcome.COPIED:
            for hook in self.hooks:
                _safely(hook.after_get, item, Path(result.location))
        if direction is Direction.OUT and checked_output(lfn, Path(item.source))[1] != started.identity:
            raise PilotError(ErrorCode.STAGEOUT_FAILED, f"output {lfn} was replaced during its transfer")
        info = journal_info(result)
        if direction is Direction.OUT:
            info["guid"] = item.spec.guid
        journal.file_done(direction.value, lfn, durable=direction is Direction.OUT, **info)
        return from_journal(lfn, info)

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

    def _with_movers(self, direction: Direction, item: StageItem, movers: list[SiteMover],
                     first: Optional[TransferError] = None) -> TransferResult:
        for position, mover in enumerate(movers):
            try:
                return self._attempts(direction, item, mover, first if position == 0 else None)
            except TransferError as exc:
                last = position == len(movers) - 1
                if last or not exc.failure.another_mover_may_help or self.cancel.is_set():
                    raise PilotError(error_code(direction, exc), exc.diag) from None
                log.warning("%s %s with %s failed (%s), trying %s", direction.value, item.spec.lfn, mover.name,
                            exc.diag, movers[position + 1].name)
        raise AssertionError("unreachable")

    def _attempts(self, direction: Direction, item: StageItem, mover: SiteMover,
                  first: Optional[TransferError] = None) -> TransferResult:
        """The mover's attempts at one file; `first`, when given, is the failure of an attempt already made
        (by a bulk call)."""
        retries = max(1, self.queue.stagein_retries if direction is Direction.IN else self.queue.stageout_retries)
        for attempt in range(1, retries + 1):
            if self.cancel.is_set():
                raise TransferError(Failure.CANCELLED, "transfer interrupted")
            try:
                if attempt == 1 and first is not None:
                    raise first
                if direction is Direction.IN:
                    log.info("stage-in %s <- %s (%s)", item.spec.lfn, item.source, mover.name)
                    return mover.get(item.source, Path(item.dest), item.expected, self.cancel)
                existing = self._existing(mover, item)
                if existing is not None:
                    return existing
                log.info("stage-out %s -> %s (%s)", item.spec.lfn, item.dest, mover.name)
                return mover.put(Path(item.source), item.dest, item.expected, self.cancel)
            except TransferError as exc:
                if exc.failure is Failure.EXISTS and direction is Direction.OUT and exc is first:
                    existing = self._existing(mover, item)  # a bulk put refused it: the same file is done
                    if existing is not None:
                        return existing
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


def _remote(direction: Direction, item: StageItem) -> str:
    return item.source if direction is Direction.IN else item.dest


def _each(work: Callable[[int], Any], indexes: list[int], threads: int,
          name: str) -> list[tuple[Any, Optional[PilotError]]]:
    """`work` for each index, in a pool of `threads`: each file's value or its failure, in order."""
    if threads == 1:
        return [_call(work, index) for index in indexes]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        return [future.result() for future in [pool.submit(_call, work, index) for index in indexes]]


def _call(function: Callable[[int], Any], index: int) -> tuple[Any, Optional[PilotError]]:
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
