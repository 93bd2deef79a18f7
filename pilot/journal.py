"""The durable record of one job, rewritten atomically at every step.

It lives in the job's work directory as `journal.json`. A pilot that dies leaves it behind; recovery
reads it to know which step was reached and how each step ended (the payload's exit code, the job's
error), which files are already transferred, which final report is still owed to the dispatcher, who
owned the job (to tell a dead pilot from a live one) and which processes the payload was (to end what
is left of them). The job's definition, which can be large, is written once beside it (`jobdef.json`,
named by the journal's `definition`), not again at every step.

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
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.fsutil import UntrustedFile, atomic_write_json, fsync_dir, loads_json, read_capped
from pilot.layout import JOB_DEFINITION, JOURNAL, JOURNAL_FILES

log = logging.getLogger(__name__)

MAX_EVENTS_BYTES = 256 << 20  # a file-event log larger than this is not read (it cannot be the pilot's)


# The steps of a job's life, in order.
STEPS = ("created", "staged_in", "payload_done", "outputs_done", "staged_out", "reported")

MAX_JOURNAL = 64 * 2**20  # a bigger journal.json is not read back (it is not one the pilot wrote)
MAX_DEFINITION = 256 * 2**20  # nor a bigger jobdef.json
# kept in memory only: the definition has its own file, the rest is this process's bookkeeping
NOT_SAVED = frozenset({"path", "job", "_lock", "_definition_saved", "save_failures", "save_error"})


def boot_id() -> str:
    """This boot of the node: a process of another boot is certainly gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read(64).strip()
    except OSError:
        return ""


def process_start(pid: int) -> Optional[float]:
    """When process `pid` started (seconds since the epoch), None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def current_owner(pilot_id: str = "", node: str = "") -> dict[str, Any]:
    """Who owns a job: this pilot process, told apart from a later process that reuses its PID."""
    pid = os.getpid()
    return {"pid": pid, "start_time": process_start(pid), "boot_id": boot_id(), "pilot_id": pilot_id,
            "node": node or socket.gethostname()}


@dataclass
class Journal:
    path: Path
    panda_id: int
    attempt_nr: int
    site: str
    node: str
    job: dict[str, str]  # the raw definition, to rebuild the Job; saved once, in its own file
    step: str = "created"
    state: str = ""  # the last state reported to the dispatcher
    steps: dict[str, float] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # "in:<lfn>" / "out:<lfn>"
    final: Optional[dict[str, Any]] = None  # the final report, kept until the dispatcher took it
    recovery_attempts: int = 0
    updated: float = 0.0
    owner: dict[str, Any] = field(default_factory=dict)  # current_owner() of the pilot running the job
    payload: dict[str, Any] = field(default_factory=dict)  # pid, pgid, sid, start_time (+ cgroup) of the payload
    outcome: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> how it ended (exit code, error)
    error: Optional[dict[str, Any]] = None  # the job's error: {"code", "diag"} (None: none so far)
    # the heartbeat thread and the main thread both record in it: one change and save at a time
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _definition_saved: bool = field(default=False, repr=False, compare=False)
    save_failures: int = field(default=0, compare=False)  # writes that failed (a full disk): the report says so
    save_error: str = field(default="", compare=False)  # why the last of them failed

    @classmethod
    def create(cls, workdir: Path, panda_id: int, attempt_nr: int, site: str, node: str,
               job: dict[str, str], owner: Optional[dict[str, Any]] = None) -> Journal:
        journal = cls(Path(workdir) / JOURNAL, panda_id, attempt_nr, site, node, dict(job),
                      owner=dict(owner or current_owner(node=node)))
        journal.reach("created")
        return journal

    @classmethod
    def load(cls, path: Path) -> Journal:
        """Read a journal back; raises ValueError for anything that is not a journal this pilot wrote
        (truncated, corrupt, too big, a link or special file planted in its place) and OSError when it
        cannot be read."""
        data = loads_json(read_capped(Path(path), MAX_JOURNAL), max_bytes=MAX_JOURNAL)
        if not isinstance(data, dict):
            raise ValueError("a journal is a JSON object")
        data.pop("version", None)
        definition = data.pop("definition", None)
        if "job" not in data:  # journals before version 2 held the definition themselves
            if definition != JOB_DEFINITION:
                raise ValueError("the journal names no job definition")
            data["job"] = loads_json(read_capped(Path(path).with_name(JOB_DEFINITION), MAX_DEFINITION),
                                     max_bytes=MAX_DEFINITION)
        known = {f.name: f for f in dataclasses.fields(cls) if f.name not in NOT_SAVED or f.name == "job"}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown journal fields {sorted(unknown)}")
        try:
            journal = cls(path=Path(path), _definition_saved=True, **data)
        except TypeError as exc:
            raise ValueError(f"incomplete journal: {exc}") from None
        if not (_is_int(journal.panda_id) and _is_int(journal.attempt_nr) and _is_int(journal.recovery_attempts)
                and journal.step in STEPS and isinstance(journal.job, dict) and isinstance(journal.files, dict)
                and isinstance(journal.site, str) and isinstance(journal.owner, dict)
                and isinstance(journal.payload, dict) and isinstance(journal.outcome, dict)
                and isinstance(journal.updated, (int, float))):
            raise ValueError("journal fields of the wrong type")
        journal.files.update(read_events(journal.events_path))
        return journal

    @property
    def events_path(self) -> Path:
        return self.path.with_name(JOURNAL_FILES)

    def _save_definition(self) -> None:
        if not self._definition_saved:
            atomic_write_json(self.path.with_name(JOB_DEFINITION), self.job)
            self._definition_saved = True

    def save(self) -> bool:
        """Write the journal; a failure (a full disk) is logged, not raised: the job goes on and is
        reported all the same, only a later recovery would know less."""
        with self._lock:
            self.updated = time.time()
            data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                    if f.name not in NOT_SAVED}
            data.update(version=2, definition=JOB_DEFINITION)
            try:
                self._save_definition()
                atomic_write_json(self.path, data)
            except OSError as exc:
                self._not_saved(str(self.path), exc)
                return False
            return True

    def _not_saved(self, what: str, exc: OSError) -> None:
        """A write of the journal failed: logged with its reason and counted, for the final report."""
        self.save_failures += 1
        self.save_error = exc.strerror or str(exc)
        log.error("journal %s not saved: %s", what, self.save_error)

    def reach(self, step: str, **outcome: Any) -> None:
        """The job reached `step`; `outcome` says how it ended (e.g. the payload's exit_code)."""
        if step not in STEPS:
            raise ValueError(f"unknown journal step {step!r}")
        with self._lock:
            self.sync()
            self.step = step
            self.steps[step] = time.time()
            if outcome:
                self.outcome[step] = dict(outcome)
            self.save()

    def fail(self, code: int, diag: str) -> None:
        """The job's error (the first one counts): a later pilot reports the job failed with it."""
        with self._lock:
            if self.error is None:
                self.error = {"code": int(code), "diag": diag}
                self.save()

    def take(self, owner: dict[str, Any]) -> None:
        """A new owner (a recovering pilot) takes the job over: the attempt is counted first."""
        with self._lock:
            self.owner = dict(owner)
            self.recovery_attempts += 1
            self.save()

    def payload_started(self, **identity: Any) -> None:
        """The payload's process identity (pid, pgid, sid, start_time, cgroup), before it does anything."""
        with self._lock:
            self.payload = dict(identity)
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
                fd = self._open_events()
                try:
                    os.write(fd, line)
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._not_saved(f"file event {key}", exc)

    def _open_events(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.events_path, flags)
        except FileNotFoundError:
            fd = os.open(self.events_path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            fsync_dir(self.events_path.parent)  # the new name itself survives a crash
            return fd

    def sync(self) -> None:
        """Make every file event durable (before a step that counts on them)."""
        with self._lock:
            try:
                fd = os.open(self.events_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            except OSError as exc:
                self._not_saved(f"file events {self.events_path}", exc)
                return
            try:
                os.fsync(fd)
            except OSError as exc:
                self._not_saved(f"file events {self.events_path}", exc)
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

    def settled(self, state: str) -> None:
        """The dispatcher took the final report (state `state`): nothing is owed any more."""
        with self._lock:
            self.final = None
            self.state = state
            self.step = "reported"
            self.steps["reported"] = time.time()
            self.save()

    def has_reached(self, step: str) -> bool:
        return STEPS.index(self.step) >= STEPS.index(step)


def read_events(path: Path) -> dict[str, dict[str, Any]]:
    """The file events folded into {key: entry}; later events win; a line that is not a whole JSON
    object (a crash mid-append) is skipped. Never follows a link, never reads more than the cap."""
    try:
        data = read_capped(path, MAX_EVENTS_BYTES)
    except FileNotFoundError:
        return {}
    except (UntrustedFile, OSError) as exc:
        log.error("journal file events %s not read: %s", path, exc)
        return {}
    files: dict[str, dict[str, Any]] = {}
    for raw in data.split(b"\n")[:-1]:  # the last piece is empty or a torn line
        try:
            event = loads_json(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("key"), str):
            key = event.pop("key")
            files[key] = event
    return files


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
