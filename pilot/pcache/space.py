"""Room in the cache: the size limit, reserving room for a new entry and evicting the least recently used
entries not in use to make it (down to the hysteresis fraction of the limit). Reservations and evictions
of all pilots on the node go one at a time, under `space.lock`."""

from __future__ import annotations

import logging
import shutil
from typing import Callable

from pilot.pcache.files import CacheKey, clear, entry_paths
from pilot.pcache.index import Index
from pilot.pcache.lock import EntryLock
from pilot.pcache.settings import PcacheSettings, parse_limit
from sitemovers.base import Expected

log = logging.getLogger(__name__)


class Space:
    def __init__(self, settings: PcacheSettings, index: Index, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.root = settings.root
        self.index = index
        self.clock = clock

    def limit_bytes(self) -> int:
        kind, value = parse_limit(self.settings.limit)
        if kind == "percent":
            return int(shutil.disk_usage(self.root).total * value / 100)
        return int(value)

    def reserve(self, key: CacheKey, expected: Expected) -> bool:
        """Make room for the entry (LRU eviction, with hysteresis) and record it as being filled. False when
        there is no room even after eviction."""
        need = expected.fsize or 0
        limit = self.limit_bytes()
        space = EntryLock(self.root / "space.lock")
        space.acquire(exclusive=True, wait=3600.0)
        try:
            used = self.index.used_bytes()
            if used + need > limit:
                self.evict(used + need - int(limit * self.settings.hysteresis), keep=key.digest)
                used = self.index.used_bytes()
            if used + need > limit or need > shutil.disk_usage(self.root).free:
                return False
            self.index.filling(key.digest, key.scope, key.lfn, expected.guid, need, self.clock())
            return True
        finally:
            space.release()

    def evict(self, amount: int, keep: str) -> int:
        """Evict least-recently-used entries not in use until `amount` bytes are freed; returns bytes freed."""
        freed = 0
        for digest, scope, lfn, fsize in self.index.least_recently_used():
            if freed >= amount:
                break
            if digest == keep:
                continue
            key = CacheKey(scope, lfn)
            if key.digest != digest:
                continue
            lock = EntryLock(entry_paths(self.root, key)[2])
            if not lock.acquire(exclusive=True):
                continue  # being linked or written
            try:
                self.drop(key)
                lock.unlink()
            finally:
                lock.release()
            freed += fsize
            self.index.count(evictions=1)
            log.info("pcache: evicted %s:%s (%d bytes)", scope, lfn, fsize)
        return freed

    def drop(self, key: CacheKey) -> None:
        """Remove an entry (its lock held exclusively): file, leftovers of a fill, row."""
        clear(self.root, key)
        self.index.delete(key.digest)
