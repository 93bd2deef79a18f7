"""The durable record of one job, rewritten atomically at every step.

It lives in the job's work directory as `journal.json`. A pilot that dies leaves it behind; recovery
reads it to know which step was reached, which files are already transferred, and which final report
is still owed to the dispatcher.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.fsutil import atomic_write_json

JOURNAL_NAME = "journal.json"

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

    @classmethod
    def create(cls, workdir: Path, panda_id: int, attempt_nr: int, site: str, node: str,
               job: dict[str, str]) -> Journal:
        journal = cls(Path(workdir) / JOURNAL_NAME, panda_id, attempt_nr, site, node, dict(job))
        journal.reach("created")
        return journal

    @classmethod
    def load(cls, path: Path) -> Journal:
        data = json.loads(Path(path).read_text())
        data.pop("version", None)
        return cls(path=Path(path), **data)

    def save(self) -> None:
        self.updated = time.time()
        data = asdict(self)
        data.pop("path")
        data["version"] = 1
        atomic_write_json(self.path, data)

    def reach(self, step: str) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown journal step {step!r}")
        self.step = step
        self.steps[step] = time.time()
        self.save()

    def reported(self, state: str) -> None:
        self.state = state
        self.save()

    def file_done(self, direction: str, lfn: str, **info: Any) -> None:
        self.files[f"{direction}:{lfn}"] = {"status": "done", **info}
        self.save()

    def file_info(self, direction: str, lfn: str) -> Optional[dict[str, Any]]:
        entry = self.files.get(f"{direction}:{lfn}")
        return entry if entry and entry.get("status") == "done" else None

    def owe_final(self, report: Optional[dict[str, Any]]) -> None:
        """Keep the final report until the dispatcher has taken it (None: it has)."""
        self.final = report
        self.save()

    def has_reached(self, step: str) -> bool:
        return STEPS.index(self.step) >= STEPS.index(step)
