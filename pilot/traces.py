"""Transfer traces: one report per file transfer, to the Rucio trace endpoint the queue names (`trace_url`).

The successor of the DQ2 tracing report: stage-in sends `get_sm` (`get_sm_a` for analysis jobs),
stage-out `put_sm` (`put_sm_a`), with the fields of Rucio's trace schema for those events. A trace is
information for data management, never part of the job: sending it is bounded by a short timeout, and
any failure to send is logged once and otherwise ignored; it never fails a transfer.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import requests

log = logging.getLogger(__name__)

EVENT_VERSION = "pandapilot"
TIMEOUT = (3.0, 5.0)  # connect, read (s)


@dataclass
class Trace:
    """One transfer, in the trace schema's field names (camelCase as Rucio stores them)."""

    eventType: str  # noqa: N815 - the schema's names
    scope: str
    filename: str
    dataset: str = ""
    datasetScope: str = ""  # noqa: N815
    guid: str = ""
    filesize: int = 0
    localSite: str = ""  # noqa: N815 - the queue
    remoteSite: str = ""  # noqa: N815 - the storage endpoint (RSE) of the other side
    protocol: str = ""  # the mover family that moved it
    url: Optional[str] = None
    clientState: str = "INIT"  # noqa: N815 - DONE, FOUND_ROOT (direct access), FAILED, ...
    stateReason: str = ""  # noqa: N815
    appid: str = ""  # the PanDA job ID
    pq: str = ""  # the PanDA queue
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex)
    eventVersion: str = EVENT_VERSION  # noqa: N815
    hostname: str = field(default_factory=socket.gethostname)
    timeStart: float = field(default_factory=time.time)  # noqa: N815
    transferStart: Optional[float] = None  # noqa: N815
    transferEnd: Optional[float] = None  # noqa: N815

    def finish(self, state: str, reason: str = "") -> Trace:
        self.clientState = state
        self.stateReason = reason[:500]
        self.transferEnd = time.time()
        return self

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def event_type(direction: str, analysis: bool) -> str:
    """'in' -> get_sm, 'out' -> put_sm; the analysis flavour ends in _a."""
    base = "get_sm" if direction == "in" else "put_sm"
    return base + "_a" if analysis else base


class TraceSender:
    """Posts traces to one endpoint. `send` never raises and returns whether the server took the trace."""

    def __init__(self, url: str, session: Optional[requests.Session] = None, timeout: Any = TIMEOUT) -> None:
        self.url = url
        self.session = session or requests.Session()
        self.timeout = timeout
        self._warned = False

    def send(self, trace: Trace) -> bool:
        if not self.url:
            return False
        try:
            reply = self.session.post(self.url, json=trace.as_dict(), timeout=self.timeout)
            ok = reply.status_code in (200, 201)
            problem = "" if ok else f"HTTP {reply.status_code}"
        except Exception as exc:  # noqa: BLE001 - a trace must never fail a transfer
            ok, problem = False, f"{type(exc).__name__}: {exc}"
        if not ok and not self._warned:
            self._warned = True  # once per sender: a dead endpoint must not flood the log
            log.warning("trace for %s not sent to %s (%s); transfers go on", trace.filename, self.url, problem)
        return ok


class Tracer:
    """The staging loop's side of traces: one per stager, told the job once, asked for one trace per file.

    `with tracer.transfer("in", spec, url, "xrootd"):` sends DONE when the block ends normally and FAILED
    (with the error's one-line diagnostic) when it raises; the exception goes on unchanged."""

    def __init__(self, queue: str, url: str = "", sender: Optional[TraceSender] = None) -> None:
        self.queue = queue
        self.sender = sender or (TraceSender(url) if url else None)
        self.appid = ""
        self.analysis = False

    def job(self, panda_id: int, analysis: bool) -> None:
        self.appid, self.analysis = str(panda_id), analysis

    def new(self, direction: str, spec: Any, url: str, protocol: str) -> Trace:
        return Trace(eventType=event_type(direction, self.analysis), scope=spec.scope or "", filename=spec.lfn,
                     dataset=spec.dataset or "", datasetScope=spec.scope or "", guid=spec.guid or "",
                     filesize=int(spec.fsize or 0), localSite=self.queue, pq=self.queue,
                     remoteSite=getattr(spec, "ddm_endpoint", "") or "", protocol=protocol, url=url,
                     appid=self.appid, transferStart=time.time())

    def send(self, trace: Trace) -> None:
        if self.sender is not None:
            self.sender.send(trace)

    @contextmanager
    def transfer(self, direction: str, spec: Any, url: str, protocol: str) -> Iterator[Trace]:
        trace = self.new(direction, spec, url, protocol)
        try:
            yield trace
        except BaseException as exc:
            self.send(trace.finish("FAILED", str(getattr(exc, "diag", "") or exc)))
            raise
        self.send(trace.finish(trace.clientState if trace.clientState != "INIT" else "DONE"))
