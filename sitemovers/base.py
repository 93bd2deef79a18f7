"""The SiteMover interface: move one file, verify it, say what happened.

Movers know nothing of jobs or dispatchers. The caller (pilot/staging.py) chooses the mover, builds the
source and destination, decides on retries and maps a TransferError to a job error code.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from sitemovers.checksum import Checksum


class Outcome(str, enum.Enum):
    COPIED = "copied"
    DIRECT = "direct"  # left in place for the payload to read remotely (not a failure)
    ON_TAPE = "on_tape"  # must be recalled first (not a failure of the mover)


class Failure(str, enum.Enum):
    NOT_FOUND = "not_found"
    SIZE_MISMATCH = "size_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    NO_SPACE = "no_space"
    TIMEOUT = "timeout"
    AUTH = "auth"
    CANCELLED = "cancelled"
    FAILED = "failed"  # anything else

    @property
    def retryable(self) -> bool:
        return self in (Failure.SIZE_MISMATCH, Failure.CHECKSUM_MISMATCH, Failure.TIMEOUT, Failure.FAILED)


class TransferError(Exception):
    def __init__(self, failure: Failure, diag: str, checksum_kind: str = "") -> None:
        super().__init__(diag)
        self.failure = failure
        self.diag = diag
        self.checksum_kind = checksum_kind  # which checksum disagreed, for the error code


@dataclass
class Expected:
    """What the file should be, when known."""

    fsize: Optional[int] = None
    checksum: Optional[Checksum] = None
    guid: str = ""


@dataclass
class TransferResult:
    location: str  # the local path after a get, the destination URL after a put
    fsize: int
    checksum: Optional[Checksum]
    outcome: Outcome = Outcome.COPIED
    seconds: float = 0.0


@dataclass
class MoverSettings:
    """The queue's settings a mover may use: setup script, prefix rewrites, tokens, extra options."""

    setup: str = ""
    prefix_rewrites: list[tuple[str, str]] = field(default_factory=list)  # from copyprefix "from^to"
    space_token: str = ""
    timeout: float = 0.0  # 0: the mover's own default from the file size
    options: dict[str, Any] = field(default_factory=dict)


class SiteMover(ABC):
    """One family of storage access. Subclasses register under `name` (entry point group pilot.sitemovers)."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Optional[MoverSettings] = None) -> None:
        self.settings = settings or MoverSettings()

    def rewrite(self, url: str) -> str:
        for old, new in self.settings.prefix_rewrites:
            if old and url.startswith(old):
                return new + url[len(old):]
        return url

    @abstractmethod
    def get(self, source: str, dest: Path, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        """Bring `source` to the local path `dest`, verified against `expected`."""

    @abstractmethod
    def put(self, source: Path, destination: str, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        """Send the local file `source` to `destination`, verified; returns what landed."""


def verify(lfn: str, fsize: int, checksum: Optional[Checksum], expected: Expected) -> None:
    """Raise TransferError when the size or checksum disagree with what was expected."""
    if expected.fsize is not None and fsize != expected.fsize:
        raise TransferError(Failure.SIZE_MISMATCH, f"{lfn}: size {fsize} != expected {expected.fsize}")
    if expected.checksum is not None and checksum is not None and checksum != expected.checksum:
        raise TransferError(
            Failure.CHECKSUM_MISMATCH,
            f"{lfn}: {checksum.kind} {checksum.value} != expected {expected.checksum.value}",
            checksum_kind=checksum.kind,
        )
