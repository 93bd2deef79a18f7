"""The durable record of one job, rewritten atomically at every step.

It lives in the job's work directory as `journal.json`. A pilot that dies leaves it behind; recovery
reads it to know which step was reached, which files are already transferred, and which final report
is still owed to the dispatcher.

File records are events appended to `journal.files.jsonl` beside it (one JSON object per line), so the
cost per file stays flat however many files a job has: an output's event is fsynced before the
stage-out returns (exactly once: a resumed job never sends it again), an input's is made durable with
the next step (a lost input record only means fetching it again). `load` folds the events into `files`
(a torn last line, from a crash mid-write, is ignored); `save` keeps a snapshot of `files` in
journal.json as well.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.fsutil import atomic_write_json
from pilot.layout import JOURNAL, JOURNAL_FILES

log = logging.getLogger(__name__)

MAX_EVENTS_BYTES = 256 << 20  # a file-event log larger than this is not read (it cannot be the pilot's)


# The steps of a job's life, in order.
STEPS = ("created", "staged_in", "payload_done", "staged_out", "reported")


@dataclass
class Journal:
    path: Path
    panda_id: int
    attempt_nr: int
    site: str
    node: str
    job: dict[str, str]  # the raw definition, to rebuild the Job
    step: str = "created"
    state: str = ""  # the last state reported to the dispatcher
    steps: dict[str, float] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # "in:<lfn>" / "out:<lfn>"
    final: Optional[dict[str, Any]] = None  # the final report, kept until the dispatcher took it
    recovery_attempts: int = 0
    updated: float = 0.0
    # the heartbeat thread and the main thread both record in it: one change and save at a time
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def create(cls, workdir: Path, panda_id: int, attempt_nr: int, site: str, node: str,
               job: dict[str, str]) -> Journal:
        journal = cls(Path(workdir) / JOURNAL, panda_id, attempt_nr, site, node, dict(job))
        journal.reach("created")
        return journal

    @classmethod
    def load(cls, path: Path) -> Journal:
        data = json.loads(Path(path).read_text())
        data.pop("version", None)
        journal = cls(path=Path(path), **data)
        journal.files.update(read_events(journal.events_path))
        return journal

    @property
    def events_path(self) -> Path:
        return self.path.with_name(JOURNAL_FILES)

    def save(self) -> bool:
        """Write the journal; a failure (a full disk) is logged, not raised: the job goes on and is
        reported all the same, only a later recovery would know less."""
        with self._lock:
            self.updated = time.time()
            data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                    if f.name not in ("path", "_lock")}
            data["version"] = 1
            try:
                atomic_write_json(self.path, data)
            except OSError as exc:
                log.error("journal %s not saved: %s", self.path, exc)
                return False
            return True

    def reach(self, step: str) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown journal step {step!r}")
        with self._lock:
            self.sync()
            self.step = step
            self.steps[step] = time.time()
            self.save()

    def reported(self, state: str) -> None:
        with self._lock:
            self.state = state
            self.save()

    def file_done(self, direction: str, lfn: str, durable: bool = True, **info: Any) -> None:
        """Record a transferred file: one appended event (fsynced when `durable`), nothing rewritten."""
        key = f"{direction}:{lfn}"
        entry = {"status": "done", **info}
        line = (json.dumps({"key": key, **entry}, sort_keys=True) + "\n").encode()
        with self._lock:
            self.files[key] = entry
            try:
                fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644)
                try:
                    os.write(fd, line)
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.error("journal file event %s not saved: %s", key, exc)

    def sync(self) -> None:
        """Make every file event durable (before a step that counts on them)."""
        with self._lock:
            try:
                fd = os.open(self.events_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            except OSError as exc:
                log.error("journal file events %s not synced: %s", self.events_path, exc)
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def file_info(self, direction: str, lfn: str) -> Optional[dict[str, Any]]:
        with self._lock:
            entry = self.files.get(f"{direction}:{lfn}")
            return dict(entry) if entry and entry.get("status") == "done" else None

    def owe_final(self, report: Optional[dict[str, Any]]) -> None:
        """Keep the final report until the dispatcher has taken it (None: it has)."""
        with self._lock:
            self.final = report
            self.save()

    def has_reached(self, step: str) -> bool:
        return STEPS.index(self.step) >= STEPS.index(step)


def read_events(path: Path) -> dict[str, dict[str, Any]]:
    """The file events folded into {key: entry}; later events win; a line that is not a whole JSON
    object (a crash mid-append) is skipped. Never follows a link, never reads more than the cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("journal file events %s unreadable: %s", path, exc)
        return {}
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            log.error("journal file events %s is not a regular file: ignored", path)
            return {}
        data = handle.read(MAX_EVENTS_BYTES + 1)
    if len(data) > MAX_EVENTS_BYTES:
        log.error("journal file events %s larger than %d bytes: ignored", path, MAX_EVENTS_BYTES)
        return {}
    files: dict[str, dict[str, Any]] = {}
    for raw in data.split(b"\n")[:-1]:  # the last piece is empty or a torn line
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("key"), str):
            key = event.pop("key")
            files[key] = event
    return files
