"""The durable record of one job, rewritten atomically at every step.

It lives in the job's work directory as `journal.json`. A pilot that dies leaves it behind; recovery
reads it to know which step was reached, which files are already transferred, and which final report
is still owed to the dispatcher.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.fsutil import atomic_write_json
from pilot.layout import JOURNAL

log = logging.getLogger(__name__)


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
    payload_cgroup: Optional[str] = None  # the payload's cgroup, for a later pilot to end what is left of it
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
        return cls(path=Path(path), **data)

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

    def note_payload(self, cgroup: Optional[str]) -> None:
        """Where the payload's processes are, before it starts."""
        with self._lock:
            self.payload_cgroup = cgroup
            self.save()

    def owe_final(self, report: Optional[dict[str, Any]]) -> None:
        """Keep the final report until the dispatcher has taken it (None: it has)."""
        with self._lock:
            self.final = report
            self.save()

    def has_reached(self, step: str) -> bool:
        return STEPS.index(self.step) >= STEPS.index(step)
