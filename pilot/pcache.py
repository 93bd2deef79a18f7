"""pcache: one file cache shared by every pilot on a worker node.

Stage-in asks the cache before any mover. A hit links the cached file into the job's work dir; a miss
fetches through the mover into the cache, then links. Pilots are separate processes: they share the
cache through the file system only.

Layout under the queue's `pcache` directory (mode 0700: payloads under other uids see nothing of it):
  index.sqlite             one row per entry (WAL mode): scope, lfn, guid, size, checksum, state, last use;
                           and the counters (hits, misses, bytes saved, evictions, ...)
  space.lock               held while room is made for a new entry (eviction and reservation)
  data/<hh>/<hash>         a complete, verified file (mode 0444); <hash> is the SHA-256 of scope and LFN,
                           so no name from a job definition ever becomes a path
  data/<hh>/<hash>.fill    an entry being written; renamed to its final name only when complete
  data/<hh>/<hash>.lock    the entry's lock (flock): shared while the file is verified and linked,
                           exclusive while it is written or evicted. A lock dies with its process, so a
                           crashed holder never blocks anyone; what it left is cleaned up by the next
                           pilot that takes the lock.

An entry is complete only when its row says so and its file, checked at every hit, still has the recorded
size and checksum; anything else (a pilot killed while filling, a corrupted file) is evicted and fetched
again.

Cached files are read-only to payloads. A hard link shares the inode, so the cached copy is protected by
its mode (0444, owned by the pilot) only from a payload that cannot change that mode: one running under
another uid that is not root (the queue's identity `uid` or `glexec`, or a pilot that is not root).
`link: auto` (the default) links unless the payload may run as root (a root pilot with identity `none`),
which gets a copy. `hardlink` always links: a payload of the pilot's own uid that chmods and writes its
input is caught by the checksum at the next hit and the entry fetched again, but jobs holding a link to
it meanwhile see the change. `copy` never links.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pilot import cachereport
from pilot.fsutil import open_untrusted
from sitemovers.base import Expected, Failure, Outcome, TransferError, TransferResult
from sitemovers.checksum import CHUNK, Checksum, Hasher

log = logging.getLogger(__name__)

LINK_MODES = ("auto", "hardlink", "copy")
COUNTERS = ("hits", "misses", "bytes_saved", "bytes_fetched", "evictions", "corrupted", "uncached")


@dataclass(frozen=True)
class CacheKey:
    """A file's storage identity."""

    scope: str
    lfn: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.scope}\0{self.lfn}".encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class PcacheSettings:
    root: Path
    limit: str = "80%"  # bytes ("500000000", "20G") or a percentage of the cache's file system ("80%")
    hysteresis: float = 0.75  # when full, evict down to this fraction of the limit
    accept: tuple[str, ...] = ()  # glob patterns of cacheable source URLs (none: all)
    reject: tuple[str, ...] = ()  # glob patterns never cached (they win over accept)
    link: str = "auto"  # auto | hardlink | copy
    wait: float = 600.0  # s to wait for another pilot filling the same entry
    report_max: int = cachereport.MAX_NAMES  # names listed in a job request before the digest form

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.link not in LINK_MODES:
            raise ValueError(f"pcache_link={self.link!r}: expected one of {', '.join(LINK_MODES)}")
        if not 0 < self.hysteresis <= 1:
            raise ValueError(f"pcache_hysteresis={self.hysteresis}: expected a fraction in (0, 1]")
        parse_limit(self.limit)

    @classmethod
    def from_queue(cls, queue: Any) -> Optional[PcacheSettings]:
        """The queue's cache settings; None when the queue has no `pcache` directory."""
        if not getattr(queue, "pcache", ""):
            return None
        return cls(root=Path(queue.pcache), limit=queue.pcache_limit, hysteresis=queue.pcache_hysteresis,
                   accept=_patterns(queue.pcache_accept), reject=_patterns(queue.pcache_reject),
                   link=queue.pcache_link, wait=queue.pcache_wait, report_max=queue.pcache_report_max)


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_limit(text: str) -> tuple[str, float]:
    """'80%' -> ('percent', 80.0); '20G' -> ('bytes', 2e10)."""
    raw = str(text).strip().lower().removesuffix("b")
    try:
        if raw.endswith("%"):
            value = float(raw[:-1])
            if 0 < value <= 100:
                return "percent", value
        elif raw and raw[-1] in UNITS:
            value = float(raw[:-1]) * UNITS[raw[-1]]
            if value > 0:
                return "bytes", value
        elif float(raw) > 0:
            return "bytes", float(raw)
    except ValueError:
        pass
    raise ValueError(f"pcache_limit={text!r}: expected bytes (e.g. 20G) or a percentage of the disk (e.g. 80%)")


@dataclass
class Staged:
    """What the cache did for one file."""

    path: Path
    fsize: int
    checksum: Optional[Checksum]
    hit: bool  # True: from the cache, no transfer
    linked: bool  # True: a hard link to the cached file; False: a copy of it


class EntryLock:
    """flock on one entry's lock file, robust against the file being removed by an evictor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self, exclusive: bool, wait: float = 0.0, cancel: Optional[threading.Event] = None) -> bool:
        """Take the lock; try for `wait` seconds (0: once). False when not taken."""
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline, pause = time.monotonic() + wait, 0.005
        while True:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self.fd, mode)
            except BlockingIOError:
                if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                    self.release()
                    return False
                time.sleep(pause)  # a holder in another process: poll, so a cancel is seen
                pause = min(pause * 2, 0.2)
                continue
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return True
            self.release()  # an evictor removed the file we locked: lock the current one

    def unlink(self) -> None:
        """Remove the lock file (while holding it exclusively)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Index:
    """The SQLite index: entries and counters. Safe for the threads of one process."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self.db = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=60000")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS entries (hash TEXT PRIMARY KEY, scope TEXT NOT NULL,"
                       " lfn TEXT NOT NULL, guid TEXT, fsize INTEGER NOT NULL, checksum TEXT, state TEXT NOT NULL,"
                       " created REAL NOT NULL, last_used REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS entries_by_use ON entries (last_used)")
            db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(name,) for name in COUNTERS])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def get(self, digest: str) -> Optional[tuple[Any, ...]]:
        rows = self.rows("SELECT fsize, checksum, state FROM entries WHERE hash = ?", (digest,))
        return rows[0] if rows else None

    def close(self) -> None:
        with self._lock:
            self.db.close()


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
        as_root = os.geteuid() == 0 if payload_as_root is None else payload_as_root
        self.link_files = settings.link == "hardlink" or (settings.link == "auto" and not as_root)

    def close(self) -> None:
        self.index.close()

    # --- names ------------------------------------------------------------------------------------
    def _paths(self, key: CacheKey) -> tuple[Path, Path, Path]:
        """(the complete file, its name while being written, its lock file)."""
        digest = key.digest
        folder = self.root / "data" / digest[:2]
        return folder / digest, folder / f"{digest}.fill", folder / f"{digest}.lock"

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
            self._clear(key)
            _unlink(dest)  # a fetch that writes in place must not write through an older link
            if not self._reserve(key, expected):
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
            temp = fill
            kind = expected.checksum.kind if expected.checksum is not None else "adler32"
            linked, checksum = self._link_or_copy(path, temp, kind)
            size = os.stat(temp, follow_symlinks=False).st_size
            if expected.fsize is not None and size != expected.fsize:
                raise TransferError(Failure.SIZE_MISMATCH, f"{key.lfn}: size {size} != expected {expected.fsize}")
            if expected.checksum is not None and checksum != expected.checksum:
                raise TransferError(Failure.CHECKSUM_MISMATCH, f"{key.lfn}: {checksum} != expected {expected.checksum}",
                                    checksum_kind=kind)
            os.chmod(temp, 0o444)  # a linked file: the job's copy too, as it will be at every hit
            os.replace(temp, data)
            now = self.clock()
            with self.index.transaction() as db:
                db.execute("UPDATE entries SET fsize = ?, checksum = ?, state = 'complete', last_used = ?"
                           " WHERE hash = ?", (size, str(checksum), now, key.digest))
                _bump(db, misses=1, bytes_fetched=size)
        except BaseException:
            self._drop(key)
            raise
        finally:
            _unlink(fill)
            lock.release()
        return Staged(path, size, checksum, hit=False, linked=linked)

    def abandon(self, key: CacheKey, lock: EntryLock) -> None:
        """The get after `lookup` failed: nothing of the entry is kept."""
        try:
            self._drop(key)
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
        _unlink(temp)
        try:
            linked, checksum = self._link_or_copy(data, temp, wanted.kind if wanted else "adler32")
            size = os.stat(temp, follow_symlinks=False).st_size
        except OSError as exc:
            _unlink(temp)
            log.warning("pcache: %s:%s cannot be placed: %s", key.scope, key.lfn, exc.strerror or exc)
            return None
        if size != fsize or (wanted is not None and checksum != wanted):
            _unlink(temp)
            if exclusive:  # seen again with the entry to ourselves: replaced by the fill that follows
                log.warning("pcache: entry %s:%s is corrupted (size or checksum changed); fetched again",
                            key.scope, key.lfn)
                self._count(corrupted=1)
            return None
        os.replace(temp, dest)
        now = self.clock()
        with self.index.transaction() as db:
            db.execute("UPDATE entries SET last_used = ? WHERE hash = ?", (now, key.digest))
            _bump(db, hits=1, bytes_saved=fsize)
        return Staged(dest, fsize, checksum, hit=True, linked=linked)

    def _link_or_copy(self, source: Path, target: Path, kind: str) -> tuple[bool, Checksum]:
        """A hard link (when allowed and possible) or a copy of `source` at `target`, and the checksum of
        what `target` holds. A link to another file system, or one the file system refuses, is a copy."""
        if self.link_files:
            try:
                os.link(source, target, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                log.debug("pcache: no hard link %s -> %s (%s): copying", source, target, exc.strerror)
            else:
                return True, _checksum(target, kind)
        return False, _copy(source, target, kind)

    def _clear(self, key: CacheKey) -> None:
        """With the entry locked exclusively: remove its file and what a crashed fill left."""
        data, fill, _ = self._paths(key)
        _remove(data)
        _remove(fill)

    def _reserve(self, key: CacheKey, expected: Expected) -> bool:
        """Make room for the entry (LRU eviction, with hysteresis) and record it as being filled."""
        need = expected.fsize or 0
        limit = self.limit_bytes()
        space = EntryLock(self.root / "space.lock")
        space.acquire(exclusive=True, wait=3600.0)
        try:
            used = self.used_bytes()
            if used + need > limit:
                self._evict(used + need - int(limit * self.settings.hysteresis), keep=key.digest)
                used = self.used_bytes()
            if used + need > limit or need > shutil.disk_usage(self.root).free:
                return False
            now = self.clock()
            with self.index.transaction() as db:
                db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, NULL, 'filling', ?, ?)",
                           (key.digest, key.scope, key.lfn, expected.guid, need, now, now))
            return True
        finally:
            space.release()

    def _evict(self, amount: int, keep: str) -> int:
        """Evict least-recently-used entries not in use until `amount` bytes are freed; returns bytes freed."""
        freed = 0
        rows = self.index.rows("SELECT hash, scope, lfn, fsize FROM entries ORDER BY last_used")
        for digest, scope, lfn, fsize in rows:
            if freed >= amount:
                break
            if digest == keep:
                continue
            key = CacheKey(scope, lfn)
            if key.digest != digest:
                continue
            lock = EntryLock(self._paths(key)[2])
            if not lock.acquire(exclusive=True):
                continue  # being linked or written
            try:
                self._drop(key)
                lock.unlink()
            finally:
                lock.release()
            freed += int(fsize)
            self._count(evictions=1)
            log.info("pcache: evicted %s:%s (%d bytes)", scope, lfn, fsize)
        return freed

    def _drop(self, key: CacheKey) -> None:
        """Remove an entry (its lock held exclusively): file, leftovers of a fill, row."""
        self._clear(key)
        with self.index.transaction() as db:
            db.execute("DELETE FROM entries WHERE hash = ?", (key.digest,))

    def _uncached(self, key: CacheKey, why: str) -> None:
        log.warning("pcache: %s:%s not cached: %s; fetched directly", key.scope, key.lfn, why)
        self._count(uncached=1)
        return None

    # --- figures and the report -------------------------------------------------------------------
    def limit_bytes(self) -> int:
        kind, value = parse_limit(self.settings.limit)
        if kind == "percent":
            return int(shutil.disk_usage(self.root).total * value / 100)
        return int(value)

    def used_bytes(self) -> int:
        return int(self.index.rows("SELECT COALESCE(SUM(fsize), 0) FROM entries")[0][0])

    def scan(self) -> list[tuple[str, str, int]]:
        """(scope, lfn, size) of every complete entry, from the index."""
        return [(scope, lfn, int(fsize)) for scope, lfn, fsize in
                self.index.rows("SELECT scope, lfn, fsize FROM entries WHERE state = 'complete'")]

    def report(self) -> dict[str, Any]:
        """What a job request carries: the cached files, or their digest for a large cache."""
        return cachereport.build(self.scan(), max_names=self.settings.report_max)

    def counters(self) -> dict[str, int]:
        return {name: int(value) for name, value in self.index.rows("SELECT name, value FROM counters")}

    def _count(self, **amounts: int) -> None:
        with self.index.transaction() as db:
            _bump(db, **amounts)


def _bump(db: sqlite3.Connection, **amounts: int) -> None:
    db.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                   [(amount, name) for name, amount in amounts.items()])


def _checksum(path: Path, kind: str) -> Checksum:
    hasher = Hasher(md5=kind == "md5")
    fd = open_untrusted(path)
    with os.fdopen(fd, "rb") as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            hasher.update(chunk)
    return hasher.result(kind)


def _copy(source: Path, dest: Path, kind: str) -> Checksum:
    """Copy with the checksum of the bytes written, in one pass (no fsync: an input can be fetched again)."""
    hasher = Hasher(md5=kind == "md5")
    fd = open_untrusted(source)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "rb") as src, os.fdopen(out, "wb") as dst:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            dst.write(chunk)
            hasher.update(chunk)
    return hasher.result(kind)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove(path: Path) -> None:
    """Remove a cache file, even a read-only one, or whatever else took its name."""
    try:
        _unlink(path)
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)


class CacheHook:
    """The cache in the staging loop (pilot/staging.py hooks): looked up before each get, filled after the
    get's final rename. A miss holds its entry's lock from `before_get` to `after_get`, so pilots asking for
    the same file meanwhile wait and then hit; `release()` (when the stage-in ends, whatever happened) lets
    go of the entries whose get failed."""

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
