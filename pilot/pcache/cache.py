"""The cache's lookup and fill: a hit places the cached file at the job's destination (a hard link, or a
copy) after checking its size and checksum; a miss takes the entry for writing, the caller's mover fetches
the file, and `fill` verifies it and publishes it under its final name. Also what the cache tells a job
request (its report) and its counters."""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pilot import cachereport
from pilot.pcache.files import CacheKey, clear, entry_paths, link_or_copy, unlink
from pilot.pcache.index import Index
from pilot.pcache.lock import EntryLock
from pilot.pcache.settings import PcacheSettings
from pilot.pcache.space import Space
from sitemovers.base import Expected, Failure, TransferError
from sitemovers.checksum import Checksum

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """What the cache did for one file."""

    path: Path
    fsize: int
    checksum: Optional[Checksum]
    hit: bool  # True: from the cache, no transfer
    linked: bool  # True: a hard link to the cached file; False: a copy of it


class Pcache:
    def __init__(self, settings: PcacheSettings, cancel: Optional[threading.Event] = None,
                 payload_as_root: Optional[bool] = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.cancel = cancel
        self.clock = clock
        self.root = settings.root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "data").mkdir(mode=0o700, exist_ok=True)
        self.index = Index(self.root / "index.sqlite")
        self.space = Space(settings, self.index, clock)
        as_root = os.geteuid() == 0 if payload_as_root is None else payload_as_root
        self.link_files = settings.link == "hardlink" or (settings.link == "auto" and not as_root)

    def close(self) -> None:
        self.index.close()

    def _paths(self, key: CacheKey) -> tuple[Path, Path, Path]:
        """(the complete file, its name while being written, its lock file)."""
        return entry_paths(self.root, key)

    def cacheable(self, source: str) -> bool:
        if any(fnmatch.fnmatchcase(source, pattern) for pattern in self.settings.reject):
            return False
        return not self.settings.accept or any(fnmatch.fnmatchcase(source, p) for p in self.settings.accept)

    # --- stage-in ---------------------------------------------------------------------------------
    def stage(self, key: CacheKey, expected: Expected, dest: Path,
              fetch: Callable[[Path], Any]) -> Optional[Staged]:
        """Place the file `key` at `dest`: from the cache, or fetched with `fetch(dest)` and added to it.

        None when the cache cannot take the file (full with nothing evictable, or another pilot's fill
        took longer than the configured wait): the caller then fetches it directly, uncached. An error
        of `fetch` propagates, with nothing left in the cache.
        """
        staged, lock = self.lookup(key, expected, dest)
        if lock is None:
            return staged
        try:
            fetch(dest)
        except BaseException:
            self.abandon(key, lock)
            raise
        return self.fill(key, expected, lock, dest)

    def lookup(self, key: CacheKey, expected: Expected, dest: Path) -> tuple[Optional[Staged], Optional[EntryLock]]:
        """Before the get: a hit is placed at `dest` and returned. On a miss the entry's lock is returned,
        held exclusively with room reserved: the caller fetches the file to `dest`, then calls `fill` (or
        `abandon`). (None, None): the cache cannot serve it; fetch it uncached.

        Another pilot filling the same entry is waited for (up to the `wait` setting): one transfer,
        the others hit."""
        data, _, lockpath = self._paths(key)
        if not data.parent.is_dir():
            data.parent.mkdir(mode=0o700, exist_ok=True)
        lock: Optional[EntryLock] = EntryLock(lockpath)
        assert lock is not None
        try:
            if not lock.acquire(exclusive=False, wait=self.settings.wait, cancel=self.cancel):
                return self._uncached(key, "another pilot is still filling it"), None
            staged = self._hit(key, expected, data, dest, exclusive=False)
            if staged is not None:
                return staged, None
            lock.release()  # a miss or a bad entry: take the entry for writing
            if not lock.acquire(exclusive=True, wait=self.settings.wait, cancel=self.cancel):
                return self._uncached(key, "another pilot is still using it"), None
            staged = self._hit(key, expected, data, dest, exclusive=True)  # filled while we waited?
            if staged is not None:
                return staged, None
            clear(self.root, key)
            unlink(dest)  # a fetch that writes in place must not write through an older link
            if not self.space.reserve(key, expected):
                return self._uncached(key, "the cache is full and nothing in it can be evicted"), None
            held, lock = lock, None
            return None, held
        finally:
            if lock is not None:
                lock.release()

    def fill(self, key: CacheKey, expected: Expected, lock: EntryLock, path: Path) -> Staged:
        """After the get's final rename: the file a mover brought to `path` becomes the entry (linked, or
        copied), verified, made read-only and published under its final name. Releases `lock`."""
        data, fill, _ = self._paths(key)
        try:
            kind = expected.checksum.kind if expected.checksum is not None else "adler32"
            linked, checksum = link_or_copy(path, fill, kind, self.link_files)
            size = os.stat(fill, follow_symlinks=False).st_size
            if expected.fsize is not None and size != expected.fsize:
                raise TransferError(Failure.SIZE_MISMATCH, f"{key.lfn}: size {size} != expected {expected.fsize}")
            if expected.checksum is not None and checksum != expected.checksum:
                raise TransferError(Failure.CHECKSUM_MISMATCH, f"{key.lfn}: {checksum} != expected {expected.checksum}",
                                    checksum_kind=kind)
            os.chmod(fill, 0o444)  # a linked file: the job's copy too, as it will be at every hit
            os.replace(fill, data)
            self.index.complete(key.digest, size, str(checksum), self.clock())
        except BaseException:
            self.space.drop(key)
            raise
        finally:
            unlink(fill)
            lock.release()
        return Staged(path, size, checksum, hit=False, linked=linked)

    def abandon(self, key: CacheKey, lock: EntryLock) -> None:
        """The get after `lookup` failed: nothing of the entry is kept."""
        try:
            self.space.drop(key)
        finally:
            lock.release()

    def _hit(self, key: CacheKey, expected: Expected, data: Path, dest: Path, exclusive: bool) -> Optional[Staged]:
        """With the entry locked: the cached file placed at dest, or None (absent, being filled, or bad)."""
        row = self.index.get(key.digest)
        if row is None or row[2] != "complete":
            return None
        fsize, recorded = int(row[0]), Checksum.parse(row[1]) if row[1] else None
        if (expected.fsize is not None and expected.fsize != fsize) or \
                (expected.checksum is not None and recorded is not None and expected.checksum != recorded):
            log.info("pcache: %s:%s cached with another size or checksum; fetched again", key.scope, key.lfn)
            return None
        wanted = expected.checksum or recorded
        temp = dest.with_name(f".pcache-{key.digest[:24]}")  # short: the name itself may be 255 bytes
        unlink(temp)
        try:
            linked, checksum = link_or_copy(data, temp, wanted.kind if wanted else "adler32", self.link_files)
            size = os.stat(temp, follow_symlinks=False).st_size
        except OSError as exc:
            unlink(temp)
            log.warning("pcache: %s:%s cannot be placed: %s", key.scope, key.lfn, exc.strerror or exc)
            return None
        if size != fsize or (wanted is not None and checksum != wanted):
            unlink(temp)
            if exclusive:  # seen again with the entry to ourselves: replaced by the fill that follows
                log.warning("pcache: entry %s:%s is corrupted (size or checksum changed); fetched again",
                            key.scope, key.lfn)
                self.index.count(corrupted=1)
            return None
        os.replace(temp, dest)
        self.index.hit(key.digest, fsize, self.clock())
        return Staged(dest, fsize, checksum, hit=True, linked=linked)

    def _uncached(self, key: CacheKey, why: str) -> None:
        log.warning("pcache: %s:%s not cached: %s; fetched directly", key.scope, key.lfn, why)
        self.index.count(uncached=1)
        return None

    # --- figures and the report -------------------------------------------------------------------
    def limit_bytes(self) -> int:
        return self.space.limit_bytes()

    def used_bytes(self) -> int:
        return self.index.used_bytes()

    def scan(self) -> list[tuple[str, str, int]]:
        """(scope, lfn, size) of every complete entry, from the index."""
        return self.index.complete_entries()

    def report(self) -> dict[str, Any]:
        """What a job request carries: the cached files, or their digest for a large cache."""
        return cachereport.build(self.scan(), max_names=self.settings.report_max)

    def counters(self) -> dict[str, int]:
        return self.index.counters()
