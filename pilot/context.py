"""What all jobs of one pilot share (PilotContext) and what each job gives back (JobResult); the life of one
job is pilot/jobrun.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.base import Dispatcher
from pilot.journal import current_owner
from pilot.launcher import Launcher
from pilot.node import NodeInfo
from pilot.pcache import Pcache
from sitemovers.registry import Registry


@dataclass
class PilotContext:
    """What all jobs of one pilot share."""

    config: PilotConfig
    queue: QueueConfig
    node: NodeInfo
    dispatcher: Dispatcher
    registry: Registry
    control: Control
    deadline: Optional[float] = None  # wall-clock time at which the pilot must be gone
    pcache: Optional[Pcache] = None  # the node's file cache, when the queue has one
    launcher: Optional[Launcher] = None  # who the payload runs as; default: the queue's `identity`

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "node": self.node.host,
            "site_name": self.queue.name,
            "scheduler_id": self.config.scheduler_id or None,
            "pilot_id": self.config.pilot_id or None,
            "batch_id": self.config.batch_id or None,
        }

    def owner(self) -> dict[str, Any]:
        """This pilot as the owner of a job (journal)."""
        return current_owner(self.config.pilot_id, self.node.host)


@dataclass
class JobResult:
    panda_id: int
    state: str  # finished or failed
    error_code: int = 0
    diag: str = ""
    exit_code: Optional[int] = None
    timing: dict[str, float] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    workdir: Optional[Path] = None
    reported: bool = False
    log_location: str = ""
