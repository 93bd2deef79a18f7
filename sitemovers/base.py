"""The SiteMover interface: move one file, verify it, say what happened.

Movers know nothing of jobs or dispatchers. The caller (pilot/staging.py) chooses the movers, builds the
source and destination, decides on retries, fallback and direct access, and maps a TransferError to a job
error code.

Writing a mover (the seam for every family)
-------------------------------------------
Subclass `SiteMover`, set `name` and the capability attributes, and implement the primitives:

- `fetch(source, tmp, expected, cancel) -> RemoteFile`: copy the remote `source` to the local path `tmp`
  and return the size and checksum of the bytes written there (computed while copying, or by the tool).
  `get()` wraps it: `tmp` is a `partial_name` in the destination's directory, the result is verified
  against `expected`, and only then renamed to the final name; `tmp` never survives a failure.
- `send(source, tmp_url, expected, cancel) -> RemoteFile`: copy the local file to the remote `tmp_url`
  (a `partial_name` beside the destination); return the local size and checksum of what was sent.
  `put()` wraps it: `stat(tmp_url)` must then report the same size (and checksum, when the storage
  reports one: `server_checksum`), then `rename(tmp_url, destination)` publishes it, refusing to
  replace an existing file; `remove(tmp_url)` cleans up on any failure.
- `stat(url) -> Optional[RemoteFile]` (None: no such file), `remove(url)`, and `_rename(src_url, dst_url)`,
  the storage's own rename. `rename()` wraps it: unless the family's primitive itself refuses to replace
  a file (`rename_noreplace`, e.g. a hard link), the target is stat'ed first and an existing file is
  never replaced (Failure.EXISTS).
- optionally `turl(url)` (direct_read movers), `prepare(urls)` / `poll(urls)` (prepare_phase movers),
  `listdir(dir_url)` (the names in a storage directory: what lets a recovery find the partial files of
  a dead pilot's puts, `remove_partials`).
A family whose storage cannot rename (an upload API that registers the file, say) overrides `put()`
itself and keeps the contract: nothing under the final name until verified.
A `bulk` family moves many files in one call: it overrides `fetch_many` (the gets' temporary names are
handled by `get_many` as for one file) and `put_many`, answering per file, in order, a result or a
TransferError; staging then hands it all of a job's files of one direction at once.

Command-line families run their tools through `sitemovers.command.run`, never through a shell.
"""

from __future__ import annotations

import enum
import os
import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from sitemovers.checksum import Checksum


class Direction(str, enum.Enum):
    IN = "in"
    OUT = "out"


class Outcome(str, enum.Enum):
    COPIED = "copied"
    DIRECT = "direct"  # left in place for the payload to read remotely (not a failure)
    FROM_CACHE = "from_cache"  # served by a staging hook (the node cache)
    ALREADY_DONE = "already_done"  # the destination already held this very file (same size and checksum)
    ON_TAPE = "on_tape"  # must be recalled first (not a failure of the mover)


class Failure(str, enum.Enum):
    NOT_FOUND = "not_found"
    SIZE_MISMATCH = "size_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    NO_SPACE = "no_space"
    TIMEOUT = "timeout"
    AUTH = "auth"  # credentials refused, permission denied
    CANCELLED = "cancelled"
    EXISTS = "exists"  # the destination holds a different file: never overwritten
    SETUP = "setup"  # the mover's setup script failed
    UNSUPPORTED = "unsupported"  # this mover cannot handle the URL or option
    CATALOG = "catalog"  # the file is stored but its catalogue registration failed
    FAILED = "failed"  # anything else

    @property
    def retryable(self) -> bool:
        """Another attempt with the same mover may succeed."""
        return self in (Failure.SIZE_MISMATCH, Failure.CHECKSUM_MISMATCH, Failure.TIMEOUT, Failure.FAILED)

    @property
    def another_mover_may_help(self) -> bool:
        """A failure of this mover's access path, not of the file: the next mover in the queue's list
        is tried. A missing, corrupt or conflicting file, a full disk or a cancel stay what they are."""
        return self in (Failure.TIMEOUT, Failure.AUTH, Failure.SETUP, Failure.UNSUPPORTED, Failure.FAILED)


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
    lfn: str = ""  # for catalogue registration and diagnostics


@dataclass(frozen=True)
class RemoteFile:
    """A file as the storage (or the copy) reports it. checksum None: not known there."""

    fsize: int
    checksum: Optional[Checksum] = None


@dataclass
class TransferResult:
    location: str  # the local path after a get, the destination URL after a put, the TURL for direct
    fsize: int
    checksum: Optional[Checksum]
    outcome: Outcome = Outcome.COPIED
    seconds: float = 0.0


@dataclass(frozen=True)
class Move:
    """One file of a many-file call: a get brings `source` (a storage URL) to `dest` (a local path), a put
    sends `source` (a local path) to `dest` (a storage URL)."""

    source: str
    dest: str
    expected: Expected


@dataclass
class MoverSettings:
    """The queue's settings a mover may use: setup script, prefix rewrites, tokens, extra options."""

    setup: str = ""
    prefix_rewrites: list[tuple[str, str]] = field(default_factory=list)  # from copyprefix "from^to"
    space_token: str = ""
    timeout: float = 0.0  # 0: the mover's own default from the file size
    options: dict[str, Any] = field(default_factory=dict)  # the queue's other settings, by name


# --- temporary names ------------------------------------------------------------------------------------
PARTIAL_SUFFIX = ".part"
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{12}\.part$")
NAME_MAX = 255


def partial_name(name: str, token: str = "") -> str:
    """The one temporary name of a transfer of `name`: `.<name>.<12 hex>.part`, hidden, recognisable by
    `is_partial`, unique per transfer (`token`, else random). A name too long to carry the decoration is
    shortened (its head kept): the temporary name only has to be unique and recognisable."""
    token = (token or secrets.token_hex(6))[:12].rjust(12, "0")
    room = NAME_MAX - len(f"..{token}{PARTIAL_SUFFIX}".encode())
    head = name
    while len(head.encode("utf-8", "surrogatepass")) > room:
        head = head[:-1]
    return f".{head}.{token}{PARTIAL_SUFFIX}"


def is_partial(name: str) -> bool:
    """A leftover of an unfinished transfer (any mover, any direction): safe for a cleanup to remove."""
    return bool(_PARTIAL.match(name))


def is_partial_of(candidate: str, name: str) -> bool:
    """`candidate` is a temporary name of a transfer of `name` (`partial_name(name, <any token>)`)."""
    tail = len(f".{'0' * 12}{PARTIAL_SUFFIX}")
    return is_partial(candidate) and candidate[:-tail] == partial_name(name, "0" * 12)[:-tail]


def new_token() -> str:
    return secrets.token_hex(6)


def verify(lfn: str, fsize: int, checksum: Optional[Checksum], expected: Expected) -> None:
    """Raise TransferError when the size or checksum disagree with what was expected (a checksum of
    another kind, or none, is not a disagreement)."""
    if expected.fsize is not None and fsize != expected.fsize:
        raise TransferError(Failure.SIZE_MISMATCH, f"{lfn}: size {fsize} != expected {expected.fsize}")
    if (expected.checksum is not None and checksum is not None and checksum.kind == expected.checksum.kind
            and checksum != expected.checksum):
        raise TransferError(
            Failure.CHECKSUM_MISMATCH,
            f"{lfn}: {checksum.kind} {checksum.value} != expected {expected.checksum.value}",
            checksum_kind=checksum.kind,
        )


def same_file(a: RemoteFile, b: RemoteFile) -> bool:
    """Same size and, where both sides know a checksum of the same kind, the same checksum. A file whose
    checksum cannot be compared is not assumed to be the same."""
    if a.fsize != b.fsize or a.checksum is None or b.checksum is None:
        return False
    return a.checksum == b.checksum


class SiteMover(ABC):
    """One family of storage access. Subclasses register under `name` (entry point group pilot.sitemovers).

    The capability attributes are read by the staging layer; a mover says what it can do, nothing is
    guessed from its name."""

    name: ClassVar[str] = ""
    schemes: ClassVar[tuple[str, ...]] = ()  # URL schemes it handles ("" for plain paths)
    direct_read: ClassVar[bool] = False  # turl() gives a URL the payload can read remotely
    server_checksum: ClassVar[bool] = False  # stat() reports the checksum the storage computed
    needs_setup: ClassVar[bool] = False  # its tools need the queue's copysetup sourced first
    bulk: ClassVar[bool] = False  # get_many/put_many move many files in one call (staging gives it a job's files)
    prepare_phase: ClassVar[bool] = False  # prepare()/poll() before any copy (tape, stager latency)
    rename_noreplace: ClassVar[bool] = False  # _rename() itself refuses an existing target (no stat needed)

    def __init__(self, settings: Optional[MoverSettings] = None) -> None:
        self.settings = settings or MoverSettings()

    def rewrite(self, url: str) -> str:
        for old, new in self.settings.prefix_rewrites:
            if old and url.startswith(old):
                return new + url[len(old):]
        return url

    # --- what staging calls ---------------------------------------------------------------------------
    def get(self, source: str, dest: Path, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        """Bring `source` to the local path `dest`, verified against `expected`; nothing under `dest`
        unless verified."""
        return raise_failure(self.get_many([Move(source, str(dest), expected)], cancel)[0])

    def get_many(self, moves: Sequence[Move],
                 cancel: Optional[threading.Event] = None) -> list[TransferResult | TransferError]:
        """`get` for many files: each file's result or failure, in order. Each lands under a temporary
        name beside its destination and is renamed only when verified; a `bulk` mover fetches them all
        in one call (`fetch_many`)."""
        tmps = [Path(move.dest).with_name(partial_name(Path(move.dest).name)) for move in moves]
        outcomes: list[TransferResult | TransferError] = []
        try:
            landed = self.fetch_many([Move(m.source, str(tmp), m.expected) for m, tmp in zip(moves, tmps)], cancel)
            for move, tmp, got in zip(moves, tmps, landed):
                outcomes.append(got if isinstance(got, TransferError) else _publish(move, tmp, got))
        finally:
            for tmp in tmps:
                _unlink(tmp)
        return outcomes

    def fetch_many(self, moves: Sequence[Move],
                   cancel: Optional[threading.Event]) -> list[RemoteFile | TransferError]:
        """Fetch each `move.source` to the local temporary path `move.dest`: one `fetch` each, unless a
        bulk mover does them all in one call."""
        return [_failure_as_value(self.fetch, m.source, Path(m.dest), m.expected, cancel) for m in moves]

    def put_many(self, moves: Sequence[Move],
                 cancel: Optional[threading.Event] = None) -> list[TransferResult | TransferError]:
        """`put` for many files: each file's result or failure, in order (a bulk mover: one call)."""
        return [_failure_as_value(self.put, Path(m.source), m.dest, m.expected, cancel) for m in moves]

    def put(self, source: Path, destination: str, expected: Expected,
            cancel: Optional[threading.Event] = None) -> TransferResult:
        """Send the local file `source` to `destination` under a temporary name, verify it by a remote
        stat, then rename it; never replaces an existing file (Failure.EXISTS)."""
        tmp_url = partial_url(destination)
        try:
            sent = self.send(Path(source), tmp_url, expected, cancel)
            verify(expected.lfn or destination, sent.fsize, sent.checksum, expected)
            remote = self.stat(tmp_url)
            if remote is None:
                raise TransferError(Failure.FAILED, f"{destination}: not found at the storage after the copy")
            name = expected.lfn or destination
            if remote.fsize != sent.fsize:
                raise TransferError(Failure.SIZE_MISMATCH,
                                    f"{name}: storage reports {remote.fsize} bytes, {sent.fsize} sent")
            if remote.checksum is not None and sent.checksum is not None and \
                    remote.checksum.kind == sent.checksum.kind and remote.checksum != sent.checksum:
                raise TransferError(Failure.CHECKSUM_MISMATCH,
                                    f"{name}: storage reports {remote.checksum}, {sent.checksum} sent",
                                    checksum_kind=remote.checksum.kind)
            self.rename(tmp_url, destination)
        except BaseException:
            try:
                self.remove(tmp_url)
            except (TransferError, OSError):
                pass
            raise
        return TransferResult(destination, sent.fsize, sent.checksum)

    # --- what a family implements -------------------------------------------------------------------
    @abstractmethod
    def fetch(self, source: str, tmp: Path, expected: Expected,
              cancel: Optional[threading.Event]) -> RemoteFile:
        """Copy `source` to the local temporary path `tmp`; the size and checksum of what landed."""

    @abstractmethod
    def send(self, source: Path, tmp_url: str, expected: Expected,
             cancel: Optional[threading.Event]) -> RemoteFile:
        """Copy the local `source` to the remote temporary `tmp_url`; the size and checksum sent."""

    @abstractmethod
    def stat(self, url: str) -> Optional[RemoteFile]:
        """The file at `url` as the storage reports it; None when there is none."""

    @abstractmethod
    def remove(self, url: str) -> None:
        """Remove `url`; no error when it does not exist."""

    def rename(self, src_url: str, dst_url: str) -> None:
        """Publish `src_url` as `dst_url`, refusing (Failure.EXISTS) to replace an existing file.

        Most storages' rename replaces its target (XRootD's mv, gfal2 on root:// and dav://, rfrename):
        the target is looked at first. (A writer racing between the look and the rename would be another
        pilot with the very same output: not expected.)"""
        if not self.rename_noreplace and self.stat(dst_url) is not None:
            raise TransferError(Failure.EXISTS, f"{dst_url}: already exists, not replaced")
        self._rename(src_url, dst_url)

    @abstractmethod
    def _rename(self, src_url: str, dst_url: str) -> None:
        """The storage's rename of `src_url` to `dst_url` (`rename()` has made sure there is no target,
        unless `rename_noreplace` says this primitive refuses one itself)."""

    def turl(self, url: str) -> str:
        """The URL the payload opens to read `url` directly (direct_read movers)."""
        raise TransferError(Failure.UNSUPPORTED, f"{self.name}: no direct read")

    def listdir(self, dir_url: str) -> list[str]:
        """The names in the storage directory `dir_url` ([] when there is no such directory). A family
        whose storage cannot be listed raises Failure.UNSUPPORTED."""
        raise TransferError(Failure.UNSUPPORTED, f"{self.name}: the storage cannot be listed")

    def remove_partials(self, url: str) -> list[str]:
        """Remove what interrupted puts of `url` left beside it (its `partial_name`s) and return their
        URLs. Only names of that pattern, for this very name, are touched. Failure.UNSUPPORTED when the
        storage cannot be listed."""
        head, sep, name = url.rpartition("/")
        removed = []
        for entry in self.listdir(head):
            if is_partial_of(entry, name):
                self.remove(f"{head}{sep}{entry}")
                removed.append(f"{head}{sep}{entry}")
        return removed

    def prepare(self, urls: list[str]) -> None:
        """Ask the storage to bring `urls` online (prepare_phase movers); returns at once."""
        return None

    def poll(self, urls: list[str]) -> dict[str, bool]:
        """Which of `urls` are online now."""
        return {url: True for url in urls}


def partial_url(url: str, token: str = "") -> str:
    """The temporary sibling of a storage URL or path: its last component through `partial_name`."""
    head, sep, name = url.rpartition("/")
    return f"{head}{sep}{partial_name(name, token)}"


def _publish(move: Move, tmp: Path, landed: RemoteFile) -> TransferResult | TransferError:
    """A fetched file verified and renamed to its final name (or why not)."""
    try:
        verify(move.expected.lfn or Path(move.dest).name, landed.fsize, landed.checksum, move.expected)
        os.replace(tmp, move.dest)
    except TransferError as exc:
        return exc
    return TransferResult(move.dest, landed.fsize, landed.checksum)


def _failure_as_value(operation: Callable[..., Any], *args: Any) -> Any:
    try:
        return operation(*args)
    except TransferError as exc:
        return exc


def raise_failure(outcome: Any) -> Any:
    if isinstance(outcome, TransferError):
        raise outcome
    return outcome


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
