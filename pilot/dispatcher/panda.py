"""The real PanDA server back end: the v1 REST dialect and the legacy /server/panda dialect.

Field names, value types and reply shapes follow panda-server 1.0.x (`pandaserver/api/v1/pilot_api.py`)
and 0.8.x (`pandaserver/jobdispatcher/JobDispatcher.py`). Both dialects call the server method with the
request fields as keyword arguments, so a field the dialect does not know is an error: only the fields
in the tables below are ever sent.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Optional
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.exceptions import ChunkedEncodingError, SSLError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from pilot.dispatcher.base import (
    Command,
    Dispatcher,
    DispatcherError,
    FailureKind,
    JobRequest,
    JobStatus,
    JobUpdate,
)
from pilot.fsutil import loads_json

logger = logging.getLogger(__name__)

# JobRequest attribute (= v1 acquire_jobs name) -> legacy getJob name.
GET_JOB_FIELDS: dict[str, str] = {
    "site_name": "siteName", "node": "node", "prod_source_label": "prodSourceLabel",
    "computing_element": "computingElement", "memory": "mem", "disk_space": "diskSpace", "cpu": "cpu",
    "n_jobs": "nJobs", "resource_type": "resourceType", "scheduler_id": "schedulerID",
    "harvester_id": "harvester_id", "worker_id": "worker_id", "remaining_time": "remaining_time",
    "job_type": "jobType", "task_id": "taskID", "prod_user_id": "prodUserID", "get_proxy_key": "getProxyKey",
}  # fmt: skip

# JobUpdate attribute (= v1 update_job name) -> legacy updateJob name.
UPDATE_JOB_FIELDS: dict[str, str] = {
    "job_id": "jobId", "job_status": "state", "attempt_nr": "attemptNr", "node": "node",
    "site_name": "siteName", "scheduler_id": "schedulerID", "pilot_id": "pilotID",
    "batch_id": "batchID", "trans_exit_code": "transExitCode", "pilot_error_code": "pilotErrorCode",
    "pilot_error_diag": "pilotErrorDiag", "exe_error_code": "exeErrorCode", "exe_error_diag": "exeErrorDiag",
    "cpu_consumption_time": "cpuConsumptionTime", "cpu_consumption_unit": "cpuConsumptionUnit",
    "cpu_conversion_factor": "cpuConversionFactor", "core_count": "coreCount", "n_events": "nEvents",
    "n_input_files": "nInputFiles", "start_time": "startTime", "end_time": "endTime",
    "job_output_report": "xml", "meta_data": "metaData", "pilot_log": "pilotLog", "stdout": "stdout",
    "pilot_timing": "pilotTiming", "job_metrics": "jobMetrics", "max_rss": "maxRSS", "max_vmem": "maxVMEM",
    "max_pss": "maxPSS", "max_swap": "maxSWAP", "mean_core_count": "meanCoreCount",
}  # fmt: skip

# Fields of the tables above that the v1 API does not have.
NOT_IN_V1 = frozenset({"cpu"})

# The v1 API checks JSON value types with isinstance(): these must be JSON integers, these may be any
# number; every other v1 field is a string (get_proxy_key too: "True").
V1_INTEGERS = frozenset({
    "memory", "disk_space", "n_jobs", "task_id", "worker_id", "remaining_time",
    "job_id", "attempt_nr", "trans_exit_code", "pilot_error_code", "exe_error_code",
    "cpu_consumption_time", "core_count", "mean_core_count", "n_events", "n_input_files",
})  # fmt: skip
V1_NUMBERS = frozenset({"cpu_conversion_factor", "max_rss", "max_vmem", "max_pss", "max_swap"})

ENDPOINTS: dict[str, dict[str, tuple[str, str]]] = {
    "v1": {
        "get_job": ("POST", "/api/v1/pilot/acquire_jobs"),
        "update_job": ("POST", "/api/v1/pilot/update_job"),
        "job_status": ("GET", "/api/v1/pilot/get_job_status"),
    },
    "legacy": {
        "get_job": ("POST", "/server/panda/getJob"),
        "update_job": ("POST", "/server/panda/updateJob"),
        "job_status": ("POST", "/server/panda/getStatus"),
    },
}

STATUS_NAMES = {
    10: "timeout", 20: "no jobs", 30: "failed", 40: "non-secure connection", 50: "invalid token",
    60: "no production/pilot role", 70: "permission denied", 80: "missing key", 90: "proxy error",
}  # fmt: skip
AUTH_STATUSES = frozenset({40, 50, 60, 70, 80, 90})
NO_JOBS = 20
# v1 failure messages that mean "your identity, role or credentials were refused" (lower case).
AUTH_MESSAGES = ("secure connection", "pilot role", "token authentication", "banned", "permission denied")
RETRY_HTTP = frozenset({408, 429})  # plus every 5xx
NOT_PROCESSED_HTTP = frozenset({429, 503})  # the server turned the request away: a job request may be repeated
TRANSIENT_TLS = ("eof occurred", "connection reset", "timed out")
MAX_REPLY = 64 * 2**20  # bytes of a reply, read at most (nesting is bounded too: pilot.fsutil.loads_json)
READ_CHUNK = 1 << 16  # bytes read from the connection at a time


@dataclass
class PandaConfig:
    url: str  # e.g. https://pandaserver.example:25443
    api: str = "v1"  # "v1" | "legacy"
    cacert: Optional[str] = None  # CA bundle file
    capath: Optional[str] = None  # CA directory; None: $X509_CERT_DIR
    insecure: bool = False  # the only way to turn server verification off
    cert: Optional[str] = None  # client certificate file
    key: Optional[str] = None  # its key file
    proxy: Optional[str] = None  # X.509 proxy (cert + key); None: $X509_USER_PROXY unless cert is set
    token: Optional[str] = field(default=None, repr=False)  # bearer token
    origin: Optional[str] = None  # sent as Origin with the token
    timeout: float = 60.0  # seconds per request
    retry_budget: float = 600.0  # seconds of retrying, in all, per call
    backoff_base: float = 2.0
    backoff_max: float = 120.0
    cache_report_field: str = ""  # send the node cache's report under this name ("": not sent, the default)


class PandaDispatcher(Dispatcher):
    """Talks to a PanDA server in one of its two dialects."""

    name = "panda"

    def __init__(
        self,
        config: PandaConfig,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if config.api not in ENDPOINTS:
            raise ValueError(f"unknown PanDA api dialect {config.api!r} (expected 'v1' or 'legacy')")
        if urlsplit(config.url).scheme not in ("http", "https"):
            raise ValueError(f"PanDA server url must start with https:// or http://: {config.url!r}")
        self.config = config
        self.requests_sent = 0
        self._sleep, self._clock, self._rand = sleep, clock, rand
        self._base = config.url.rstrip("/")
        self._endpoints = ENDPOINTS[config.api]
        self._verify = self._tls_verify(config)
        self._cert = self._tls_cert(config)
        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json", "User-Agent": "pandapilot"})
        if config.token:
            self._session.headers["Authorization"] = f"Bearer {config.token}"
            if config.origin:
                self._session.headers["Origin"] = config.origin

    @staticmethod
    def _tls_verify(cfg: PandaConfig) -> bool | str:
        if cfg.insecure:
            logger.warning("TLS verification of the PanDA server is switched off (insecure=True)")
            return False
        capath = cfg.capath if cfg.capath is not None else os.environ.get("X509_CERT_DIR")
        return cfg.cacert or capath or True

    @staticmethod
    def _tls_cert(cfg: PandaConfig) -> str | tuple[str, str] | None:
        if cfg.cert:
            return (cfg.cert, cfg.key) if cfg.key else cfg.cert
        return cfg.proxy if cfg.proxy is not None else os.environ.get("X509_USER_PROXY") or None

    # --- the Dispatcher interface ---------------------------------------------------------------

    def get_job(self, request: JobRequest) -> Optional[dict[str, str]]:
        payload = self._encode(request.fields(), GET_JOB_FIELDS)  # cached_files is no server field: dropped
        if self.config.cache_report_field and request.cached_files is not None:
            payload[self.config.cache_report_field] = json.dumps(request.cached_files, sort_keys=True)
        path, reply = self._call("get_job", payload)
        if self.config.api == "v1":
            if not reply.get("success"):
                if "no jobs" in str(reply.get("message", "")).lower():
                    return None
                self._v1_failure(path, reply)
            data = reply.get("data")
            if not isinstance(data, dict):
                raise self._protocol(path, f"'data' is {type(data).__name__}, not an object", reply)
        else:
            data = reply
        status = self._status_code(path, data)
        if status == NO_JOBS:
            return None
        self._check_status(path, status, data)
        jobs = data.get("jobs")
        if jobs is None:  # legacy single-job reply: the job is the reply
            return self._job(path, data)
        if isinstance(jobs, str):  # legacy bulk reply without JSON: the list is a JSON string
            try:
                jobs = loads_json(jobs, max_bytes=MAX_REPLY)
            except ValueError:
                raise self._protocol(path, "'jobs' is not a JSON list", jobs) from None
        if not isinstance(jobs, list):
            raise self._protocol(path, f"'jobs' is {type(jobs).__name__}, not a list", data)
        if not jobs:
            return None
        if len(jobs) > 1:
            logger.warning("%s returned %d jobs; only the first one is used", path, len(jobs))
        return self._job(path, jobs[0])

    def update_job(self, update: JobUpdate) -> Command:
        payload = self._encode(update.fields(), UPDATE_JOB_FIELDS)
        payload.update({k: self._value(k, v) for k, v in update.extra.items()})  # by wire name
        path, reply = self._call("update_job", payload)
        data = self._v1_data(path, reply) if self.config.api == "v1" else reply
        if not isinstance(data, dict):
            raise self._protocol(path, f"'data' is {type(data).__name__}, not an object", reply)
        self._check_status(path, self._status_code(path, data, default=0), data)
        return Command.parse(data.get("command"))

    def job_status(self, job_id: int) -> JobStatus:
        if self.config.api == "v1":
            path, reply = self._call("job_status", {"job_ids": str(job_id)})
            data = self._v1_data(path, reply)
            rows = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
            row = next((r for r in rows if str(r.get("job_id")) == str(job_id)), rows[0] if rows else None)
            if row is None or "status" not in row:
                raise self._protocol(path, "no job status in reply", reply)
            status, attempt = str(row["status"]), row.get("attempt_number")
        else:
            path, reply = self._call("job_status", {"ids": str(job_id)})
            self._check_status(path, self._status_code(path, reply), reply)
            if "status" not in reply:
                raise self._protocol(path, "no job status in reply", reply)
            status, attempt = str(reply["status"]), reply.get("attemptNr")
        if status.replace(" ", "").lower() == "notfound":
            return JobStatus(job_id=job_id, status="unknown")
        try:
            attempt_nr: Optional[int] = int(attempt) if attempt not in (None, "") else None
        except (TypeError, ValueError):
            attempt_nr = None
        return JobStatus(job_id=job_id, status=status, attempt_nr=attempt_nr)

    def close(self) -> None:
        self._session.close()

    # --- encoding -----------------------------------------------------------------------------

    def _encode(self, fields: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
        """Wire names and values for the dialect; fields the dialect lacks are dropped."""
        legacy = self.config.api == "legacy"
        out: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in table or (not legacy and name in NOT_IN_V1):
                logger.debug("field %s is not part of the %s dialect; not sent", name, self.config.api)
                continue
            out[table[name] if legacy else name] = self._value(name, value)
        return out

    def _value(self, name: str, value: Any) -> Any:
        if isinstance(value, bool):
            return "True" if value else "False"
        if isinstance(value, (dict, list)):
            return json.dumps(value)
        if self.config.api == "v1":
            if name in V1_INTEGERS:
                try:
                    return int(value)
                except (TypeError, ValueError):
                    return value  # let the server say what is wrong with it
            if name in V1_NUMBERS and isinstance(value, (int, float)):
                return value
        return str(value)

    # --- transport ----------------------------------------------------------------------------

    def _call(self, op: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Send one request, retrying transport failures within the budget; the decoded reply."""
        method, path = self._endpoints[op]
        if method == "GET":
            body: dict[str, Any] = {"params": payload}
        else:
            body = {"json": payload} if self.config.api == "v1" else {"data": payload}
        deadline = self._clock() + self.config.retry_budget
        attempt = 0
        while True:
            attempt += 1
            status: Optional[int] = None
            started = self._clock()
            self.requests_sent += 1
            try:
                resp = self._session.request(
                    method, self._base + path, timeout=self.config.timeout,
                    verify=self._verify, cert=self._cert, allow_redirects=False, stream=True, **body,
                )  # fmt: skip
                try:
                    text = self._read(path, resp, started + self.config.timeout)
                finally:
                    resp.close()
            except SSLError as exc:
                if not any(t in str(exc).lower() for t in TRANSIENT_TLS):
                    raise DispatcherError(
                        FailureKind.AUTH,
                        f"{path}: TLS handshake with {self._base} failed: {exc}; check the CA "
                        f"(cacert/capath, X509_CERT_DIR) and the client certificate or proxy",
                    ) from None
                failure = f"TLS error: {exc}"
            except (requests.ConnectionError, requests.Timeout, ChunkedEncodingError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if op == "get_job" and not _never_sent(exc):
                    raise self._lost(path, failure) from None
            except requests.RequestException as exc:
                raise DispatcherError(FailureKind.TRANSPORT, f"{path}: request failed: {exc}") from None
            except OSError as exc:  # requests reports missing CA/cert files as plain OSError
                raise DispatcherError(FailureKind.AUTH, f"{path}: TLS configuration: {exc}") from None
            else:
                status = resp.status_code
                logger.debug("%s %s -> HTTP %d in %.3f s", method, path, status, self._clock() - started)
                if status < 500 and status not in RETRY_HTTP:
                    return path, self._decode(path, status, text)
                failure = f"HTTP {status}: {self._excerpt(text)!r}"
                if op == "get_job" and status not in NOT_PROCESSED_HTTP:
                    raise self._lost(path, failure)
            remaining = deadline - self._clock()
            if remaining <= 0:
                tried = f"{attempt} attempt(s) within {self.config.retry_budget:g} s"
                raise DispatcherError(
                    FailureKind.TRANSPORT, f"{path}: giving up after {tried}: {failure}", status
                )
            cap = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
            delay = min(remaining, cap * self._rand())
            logger.warning("%s: %s; retry %d in %.1f s", path, failure, attempt, delay)
            self._sleep(delay)

    @staticmethod
    def _lost(path: str, failure: str) -> DispatcherError:
        """The server may have handed us a job whose reply was lost: asking again at once would take a
        second one and leave the first without a pilot (the server reclaims it). The caller waits."""
        return DispatcherError(FailureKind.LOST, f"{path}: reply lost, not asked again at once: {failure}")

    def _read(self, path: str, resp: requests.Response, deadline: float) -> str:
        """The reply's body, read in chunks and never more than MAX_REPLY bytes of it (decompressed), nor
        after the request's timeout: a broken or hostile server cannot make the pilot hold more, whatever it
        sends or declares, nor keep it reading by trickling bytes (that is a timeout, as in transport)."""
        code = resp.status_code
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_REPLY:
            raise self._too_large(path, code, int(declared))
        body = bytearray()
        for chunk in resp.iter_content(READ_CHUNK):
            body += chunk
            if len(body) > MAX_REPLY:
                raise self._too_large(path, code, len(body))
            if self._clock() > deadline:
                raise requests.ReadTimeout(f"reply not complete after {self.config.timeout:g} s ({len(body)} bytes)")
        try:
            return body.decode(resp.encoding or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know: JSON is UTF-8 anyway
            return body.decode("utf-8", errors="replace")

    @staticmethod
    def _too_large(path: str, code: int, size: int) -> DispatcherError:
        return DispatcherError(
            FailureKind.PROTOCOL,
            f"{path}: HTTP {code}, reply larger than the limit of {MAX_REPLY} bytes ({size} bytes or more); not read",
            code,
        )

    def _decode(self, path: str, code: int, text: str) -> dict[str, Any]:
        if code in (401, 403):
            hint = " (wrong api dialect for this server?)" if "is forbidden" in text else ""
            raise DispatcherError(
                FailureKind.AUTH, f"{path}: HTTP {code}, access refused{hint}: {self._excerpt(text)!r}", code
            )
        if code != 200:
            hint = " (wrong server url or api dialect?)" if code in (301, 302, 307, 308, 404) else ""
            raise self._protocol(path, f"unexpected HTTP status{hint}", text, code)
        if not text.strip():
            raise self._protocol(path, "empty reply", text, code)
        stripped = text.lstrip()
        if self.config.api == "legacy" and not stripped.startswith(("{", "[")):
            reply: Any = dict(parse_qsl(text.strip(), keep_blank_values=True))
            if "StatusCode" not in reply:
                raise self._protocol(path, "reply is neither JSON nor StatusCode=...", text, code)
            return reply
        try:
            reply = loads_json(text, max_bytes=MAX_REPLY)
        except ValueError as exc:
            raise self._protocol(path, f"reply is not valid JSON ({exc})", text, code) from None
        if not isinstance(reply, dict):
            raise self._protocol(path, f"reply is a JSON {type(reply).__name__}, not an object", text, code)
        key = "success" if self.config.api == "v1" else "StatusCode"
        if key not in reply:
            raise self._protocol(path, f"reply has no '{key}'", text, code)
        return reply

    # --- reply interpretation -----------------------------------------------------------------

    def _v1_data(self, path: str, reply: dict[str, Any]) -> Any:
        if not reply.get("success"):
            self._v1_failure(path, reply)
        return reply.get("data")

    def _v1_failure(self, path: str, reply: dict[str, Any]) -> NoReturn:
        message = str(reply.get("message") or "no message")
        data = reply.get("data")
        status = data.get("StatusCode") if isinstance(data, dict) else None
        status = status if isinstance(status, int) else None
        kind = FailureKind.AUTH if any(m in message.lower() for m in AUTH_MESSAGES) else FailureKind.SERVER
        raise DispatcherError(kind, f"{path}: server refused: {self._excerpt(message)}", status)

    def _status_code(self, path: str, data: dict[str, Any], default: Optional[int] = None) -> int:
        value = data.get("StatusCode", default)
        try:
            return int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise self._protocol(path, f"bad StatusCode {value!r}", data) from None

    def _check_status(self, path: str, status: int, data: dict[str, Any]) -> None:
        if status == 0:
            return
        name = STATUS_NAMES.get(status, "unknown status")
        detail = data.get("errorDialog") or data.get("ErrorDiag") or ""
        diag = f"{path}: StatusCode={status} ({name})" + (f": {self._excerpt(str(detail))}" if detail else "")
        kind = FailureKind.AUTH if status in AUTH_STATUSES else FailureKind.SERVER
        raise DispatcherError(kind, diag, status)

    def _job(self, path: str, job: Any) -> dict[str, str]:
        if not isinstance(job, dict):
            raise self._protocol(path, f"job is {type(job).__name__}, not an object", job)
        if job.get("PandaID") in (None, "", "NULL"):
            raise self._protocol(path, "job without PandaID", job)
        return {str(k): _as_str(v) for k, v in job.items() if k != "StatusCode"}

    def _protocol(self, path: str, what: str, body: Any, code: int = 200) -> DispatcherError:
        """A reply we cannot understand (replies reaching interpretation all came with HTTP 200)."""
        excerpt = self._excerpt(body if isinstance(body, str) else json.dumps(body, default=str))
        return DispatcherError(FailureKind.PROTOCOL, f"{path}: HTTP {code}, {what}: {excerpt!r}", code)

    def _excerpt(self, text: str, limit: int = 120) -> str:
        flat = " ".join(re.sub(r"<[^>]*>", " ", text).split())
        if self.config.token:
            flat = flat.replace(self.config.token, "***")
        return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _as_str(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _never_sent(exc: Exception) -> bool:
    """True when the request surely did not reach the server (no connection could be made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))

