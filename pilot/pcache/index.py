"""The cache's SQLite index (WAL mode, shared by every pilot on the node): one row per entry (scope, lfn,
guid, size, checksum, state, last use) and the counters (hits, misses, bytes saved, evictions, ...)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

COUNTERS = ("hits", "misses", "bytes_saved", "bytes_fetched", "evictions", "corrupted", "uncached")


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
        """(fsize, checksum, state) of an entry, None when there is none."""
        rows = self.rows("SELECT fsize, checksum, state FROM entries WHERE hash = ?", (digest,))
        return rows[0] if rows else None

    # --- entries --------------------------------------------------------------------------------------
    def filling(self, digest: str, scope: str, lfn: str, guid: Optional[str], fsize: int, now: float) -> None:
        """A new entry, room reserved for it, being written."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, NULL, 'filling', ?, ?)",
                       (digest, scope, lfn, guid, fsize, now, now))

    def complete(self, digest: str, fsize: int, checksum: str, now: float) -> None:
        """The entry's file is written and verified: a miss that fetched `fsize` bytes."""
        with self.transaction() as db:
            db.execute("UPDATE entries SET fsize = ?, checksum = ?, state = 'complete', last_used = ?"
                       " WHERE hash = ?", (fsize, checksum, now, digest))
            bump(db, misses=1, bytes_fetched=fsize)

    def hit(self, digest: str, fsize: int, now: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE entries SET last_used = ? WHERE hash = ?", (now, digest))
            bump(db, hits=1, bytes_saved=fsize)

    def delete(self, digest: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM entries WHERE hash = ?", (digest,))

    def least_recently_used(self) -> list[tuple[str, str, str, int]]:
        """(hash, scope, lfn, fsize) of every entry, least recently used first."""
        return [(d, s, lfn, int(size)) for d, s, lfn, size in
                self.rows("SELECT hash, scope, lfn, fsize FROM entries ORDER BY last_used")]

    def used_bytes(self) -> int:
        return int(self.rows("SELECT COALESCE(SUM(fsize), 0) FROM entries")[0][0])

    def complete_entries(self) -> list[tuple[str, str, int]]:
        """(scope, lfn, size) of every complete entry."""
        return [(scope, lfn, int(fsize)) for scope, lfn, fsize in
                self.rows("SELECT scope, lfn, fsize FROM entries WHERE state = 'complete'")]

    # --- counters -------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return {name: int(value) for name, value in self.rows("SELECT name, value FROM counters")}

    def count(self, **amounts: int) -> None:
        with self.transaction() as db:
            bump(db, **amounts)

    def close(self) -> None:
        with self._lock:
            self.db.close()


def bump(db: sqlite3.Connection, **amounts: int) -> None:
    db.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                   [(amount, name) for name, amount in amounts.items()])
