"""The durable record of one job, rewritten atomically at every step.

It lives in the job's work directory as `journal.json`. A pilot that dies leaves it behind; recovery
reads it to know which step was reached, which files are already transferred, and which final report
is still owed to the dispatcher. The job's definition, which can be large, is written once beside it
(`jobdef.json`, named by the journal's `definition`), not again at every step.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.fsutil import atomic_write_json, loads_json, read_capped
from pilot.layout import JOB_DEFINITION, JOURNAL

log = logging.getLogger(__name__)


# The steps of a job's life, in order.
STEPS = ("created", "staged_in", "payload_done", "staged_out", "reported")
MAX_JOURNAL = 256 * 2**20  # bytes a journal (or the definition beside it) may have when read back


NOT_SAVED = frozenset({"path", "job", "_lock", "_definition_saved", "save_failures", "save_error"})


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
    # the heartbeat thread and the main thread both record in it: one change and save at a time
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _definition_saved: bool = field(default=False, repr=False, compare=False)
    save_failures: int = field(default=0, compare=False)  # saves that failed (a full disk): the report says so
    save_error: str = field(default="", compare=False)  # why the last of them failed

    @classmethod
    def create(cls, workdir: Path, panda_id: int, attempt_nr: int, site: str, node: str,
               job: dict[str, str]) -> Journal:
        journal = cls(Path(workdir) / JOURNAL, panda_id, attempt_nr, site, node, dict(job))
        journal.reach("created")
        return journal

    @classmethod
    def load(cls, path: Path) -> Journal:
        """Read a journal back; ValueError or OSError when it (or its definition) cannot be read."""
        path = Path(path)
        data = loads_json(read_capped(path, MAX_JOURNAL), max_bytes=MAX_JOURNAL)
        if not isinstance(data, dict):
            raise ValueError(f"journal {path} is not a JSON object")
        data.pop("version", None)
        definition = data.pop("definition", None)
        if "job" not in data:  # journals before version 2 held the definition themselves
            if definition != JOB_DEFINITION:
                raise ValueError(f"journal {path} names no job definition")
            data["job"] = loads_json(read_capped(path.parent / JOB_DEFINITION, MAX_JOURNAL), max_bytes=MAX_JOURNAL)
        return cls(path=path, _definition_saved=True, **data)

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
                self.save_failures += 1
                self.save_error = exc.strerror or str(exc)
                log.error("journal %s not saved: %s", self.path, self.save_error)
                return False
            return True

    def reach(self, step: str) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown journal step {step!r}")
        with self._lock:
            self.step = step
            self.steps[step] = time.time()
            self.save()

    def reported(self, state: str) -> None:
        with self._lock:
            self.state = state
            self.save()

    def file_done(self, direction: str, lfn: str, **info: Any) -> None:
        with self._lock:
            self.files[f"{direction}:{lfn}"] = {"status": "done", **info}
            self.save()

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
