"""The pilot's work directory, which other pilots of the node may share (they recover each other's leftovers).

Each pilot holds the directory with a shared `flock` while it runs. At the end it is removed only by the pilot
that created it, only when it is empty, and only when no other pilot holds it: a pilot that starts while
another ends never finds its work directory gone from under it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_TRIES = 10  # another pilot removing the directory between our mkdir and our lock, again and again


@dataclass
class WorkArea:
    path: Path
    fd: int  # the directory, locked shared while this pilot runs
    created: bool  # this pilot made it (and so may remove it)

    @classmethod
    def hold(cls, path: Path) -> WorkArea:
        """Create the directory if needed and hold it; OSError when it cannot be made or kept."""
        for _ in range(_TRIES):
            try:
                path.mkdir(parents=True)
                created = True
            except FileExistsError:
                created = False
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed by the pilot that made it, between our mkdir and our open: make it anew
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return cls(path, fd, created)
            except FileNotFoundError:
                pass  # removed by the pilot that made it, before we held it: make it anew
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise OSError(f"{path} keeps being removed by another process")

    def release(self) -> None:
        """Let go; remove the directory when this pilot made it, it is empty, and no other pilot holds it."""
        try:
            if not self.created:
                return
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log.debug("work directory %s is held by another pilot: kept", self.path)
                return
            try:
                self.path.rmdir()
            except OSError:
                pass  # not empty: job dirs left behind are kept for recovery
        finally:
            os.close(self.fd)
