"""The dispatcher interface: how jobs arrive and reports leave.

A dispatcher knows nothing of files on disk: it turns a JobRequest into a raw job definition (the
server's flat dictionary of strings) and a JobUpdate into whatever the back end speaks, and returns the
server's command. Attribute names of JobRequest and JobUpdate are the v1 API's field names; each back
end maps them (see panda.py for the legacy names).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from pilot.errors import ErrorCode, PilotError


class Command(str, enum.Enum):
    """The server's back channel, carried by the reply to an update."""

    NONE = "NULL"
    KILL = "tobekilled"
    SOFTKILL = "softkill"
    DEBUG = "debug"
    DEBUGOFF = "debugoff"

    @classmethod
    def parse(cls, value: Any) -> Command:
        text = str(value or "NULL").strip()
        for member in cls:
            if member.value.lower() == text.lower():
                return member
        return cls.NONE


class FailureKind(str, enum.Enum):
    TRANSPORT = "transport"  # no answer, timeout, 5xx: worth retrying
    AUTH = "auth"  # the server refused our identity, role or permissions: stop at once
    SERVER = "server"  # the server answered with a failure status
    PROTOCOL = "protocol"  # the answer could not be understood
    LOST = "lost"  # the request reached the server, its answer did not reach us: asking again is a new request


class DispatcherError(PilotError):
    """The dispatcher could not do what was asked; `kind` says whether to retry, stop, or give up."""

    def __init__(self, kind: FailureKind, diag: str, status: Optional[int] = None) -> None:
        super().__init__(ErrorCode.COMMUNICATION_FAILURE, diag)
        self.kind = kind
        self.status = status


@dataclass
class JobRequest:
    """What the pilot says about itself when it asks for a job."""

    site_name: str
    node: str
    prod_source_label: str = "managed"
    computing_element: Optional[str] = None
    memory: Optional[int] = None  # MB
    disk_space: Optional[int] = None  # MB free in the work dir
    cpu: Optional[int] = None  # MHz (legacy dialect only)
    n_jobs: int = 1
    resource_type: Optional[str] = None
    scheduler_id: Optional[str] = None
    harvester_id: Optional[str] = None
    worker_id: Optional[int] = None
    remaining_time: Optional[int] = None  # seconds the pilot has left
    job_type: Optional[str] = None
    task_id: Optional[int] = None
    prod_user_id: Optional[str] = None
    get_proxy_key: bool = False
    cached_files: Optional[dict[str, Any]] = None  # the node cache's report (pilot/cachereport.py)

    def fields(self) -> dict[str, Any]:
        """The set fields, by v1 name."""
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}


@dataclass
class JobUpdate:
    """One report about one job. Unset (None) fields are not sent."""

    job_id: int
    job_status: str  # starting, running, transferring, holding, finished, failed
    attempt_nr: int
    node: Optional[str] = None
    site_name: Optional[str] = None
    scheduler_id: Optional[str] = None
    pilot_id: Optional[str] = None
    batch_id: Optional[str] = None
    trans_exit_code: Optional[int] = None
    pilot_error_code: Optional[int] = None
    pilot_error_diag: Optional[str] = None
    exe_error_code: Optional[int] = None
    exe_error_diag: Optional[str] = None
    cpu_consumption_time: Optional[int] = None
    cpu_consumption_unit: Optional[str] = None
    cpu_conversion_factor: Optional[float] = None
    core_count: Optional[int] = None
    mean_core_count: Optional[int] = None
    n_events: Optional[int] = None
    n_input_files: Optional[int] = None
    start_time: Optional[str] = None  # "%Y-%m-%d %H:%M:%S" UTC
    end_time: Optional[str] = None
    job_output_report: Optional[dict[str, dict[str, Any]]] = None  # {lfn: {guid, fsize, adler32, surl}}
    meta_data: Optional[str] = None  # the payload's job report, JSON text
    pilot_log: Optional[str] = None
    stdout: Optional[str] = None
    pilot_timing: Optional[str] = None  # getjob|stagein|payload|stageout|setup
    job_metrics: Optional[str] = None
    max_rss: Optional[int] = None  # kB
    max_vmem: Optional[int] = None
    max_pss: Optional[int] = None
    max_swap: Optional[int] = None  # kB
    extra: dict[str, Any] = field(default_factory=dict)  # back-end specific additions, by wire name

    def fields(self) -> dict[str, Any]:
        """The set fields, by v1 name (extra excluded)."""
        data = asdict(self)
        data.pop("extra")
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class JobStatus:
    """What the dispatcher knows of a job (used by recovery)."""

    job_id: int
    status: str  # e.g. running, holding, finished, failed, or "unknown"
    attempt_nr: Optional[int] = None
    command: Command = Command.NONE


class Dispatcher(ABC):
    """Where jobs come from and where reports go."""

    name: str = "dispatcher"

    @abstractmethod
    def get_job(self, request: JobRequest) -> Optional[dict[str, str]]:
        """One raw job definition, or None when the dispatcher has no job.

        Raises DispatcherError when it cannot answer (kind tells transport/auth/server/protocol).
        """

    @abstractmethod
    def update_job(self, update: JobUpdate) -> Command:
        """Send one report; returns the server's command. Raises DispatcherError."""

    @abstractmethod
    def job_status(self, job_id: int) -> JobStatus:
        """What the dispatcher knows of one job. Raises DispatcherError."""

    def reject(self, job: dict[str, Any], diag: str) -> None:  # noqa: B027 - optional hook
        """A definition too broken to be reported (no PandaID); the default leaves it to the pilot log."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
