"""The cache in the staging loop (pilot/staging.py hooks)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

from pilot.pcache.cache import Pcache
from pilot.pcache.files import CacheKey
from pilot.pcache.lock import EntryLock
from sitemovers.base import Outcome, TransferResult


class CacheHook:
    """Looked up before each get, filled after the get's final rename. A miss holds its entry's lock from
    `before_get` to `after_get`, so pilots asking for the same file meanwhile wait and then hit; `release()`
    (when the stage-in ends, whatever happened) lets go of the entries whose get failed."""

    def __init__(self, cache: Pcache) -> None:
        self.cache = cache
        self._held: dict[str, tuple[CacheKey, EntryLock]] = {}
        self._lock = threading.Lock()

    def before_get(self, item: Any) -> Optional[TransferResult]:
        if not item.source or not self.cache.cacheable(item.source):
            return None
        key = CacheKey(item.spec.scope, item.spec.lfn)
        staged, lock = self.cache.lookup(key, item.expected, Path(item.dest))
        if lock is not None:
            with self._lock:
                self._held[item.dest] = (key, lock)
        if staged is None:
            return None
        return TransferResult(str(staged.path), staged.fsize, staged.checksum, Outcome.FROM_CACHE)

    def after_get(self, item: Any, path: Path) -> None:
        with self._lock:
            held = self._held.pop(item.dest, None)
        if held is not None:
            self.cache.fill(held[0], item.expected, held[1], Path(path))

    def release(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for key, lock in held:
            self.cache.abandon(key, lock)
