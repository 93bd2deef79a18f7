"""The per-entry lock: flock on a lock file beside the entry, shared while the entry is verified and
linked, exclusive while it is written or evicted. A lock dies with its process, so a crashed holder never
blocks anyone."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Optional


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
