"""PilotConfig (how this pilot was launched) and QueueConfig (the site's settings for the queue).

QueueConfig is schedconfig-like and read from YAML: either a mapping of settings, or
`queues: {NAME: {settings}}` holding several queues. Unknown keys are kept in `extra` (with a warning),
so a site file written for a newer pilot still loads.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


@dataclass
class QueueConfig:
    name: str = "LOCAL"
    # data movement
    copytool: str = "local"
    copytoolin: str = ""  # stage-in mover, overrides copytool
    copytools: str = ""  # ordered movers (comma-separated), each the fallback of the one before
    copytoolsin: str = ""  # the same for stage-in
    copysetup: str = ""  # a setup script sourced before a mover's commands
    copysetupin: str = ""
    copyprefix: str = ""  # "from^to" rewrites, comma-separated
    copyprefixin: str = ""
    se: str = ""  # the storage endpoint: URL or directory where files live
    sepath: str = ""  # path under se for user (analysis) outputs
    seprodpath: str = ""  # path under se for production outputs
    setokens: str = ""
    stagein_retries: int = 3
    stageout_retries: int = 2
    transfer_retry_wait: float = 10.0  # s between transfer attempts
    maxinputsize: int = 0  # MB of inputs a job may bring in; 0: no limit
    maxinputsize_overrides: list = field(default_factory=list)  # [{taskID|processingType|dataset, maxinputsize}]
    allowdirectaccess: bool = False
    filestager: bool = False  # inputs are fetched by the payload's file stager, one ahead (not by the pilot)
    trace_url: str = ""  # Rucio's trace endpoint (http(s)://host/traces/): one trace per file transfer
    rucio_register: bool = False  # the rucio mover registers its uploads (default: upload only)
    rucio_python: str = ""  # the interpreter with rucio-clients (default: python3 after copysetup)
    gfal2_path: str = ""  # a directory holding the gfal2 Python module, when the pilot cannot import it
    lfchost: str = ""  # the LFC file catalogue (rfcp mover)
    lfcpath: str = ""  # its path for this queue's files (default /grid/atlas)
    castor_svcclass: str = ""  # "prefix^class" pairs: CASTOR service class by path (castor, rfcp movers)
    castor_svcclasses: str = ""  # classes tried in turn when no prefix matches (default "default")
    castor_stage_host: str = ""  # STAGE_HOST for the CASTOR tools
    link_inputs: bool = False  # the local mover hard-links inputs instead of copying (a read-only SE)
    transfer_threads: int = 4  # files moved at once
    prepare_timeout: float = 3600.0  # s to wait for a prepare phase (tape recall, stager) to bring inputs online
    # the node's file cache (pilot/pcache.py); off when `pcache` (its directory) is unset
    pcache: str = ""
    pcache_limit: str = "80%"  # bytes (e.g. 20G) or a percentage of the cache's disk
    pcache_hysteresis: float = 0.75  # when full, evict down to this fraction of the limit
    pcache_accept: str = ""  # comma-separated glob patterns of cacheable source URLs (empty: all)
    pcache_reject: str = ""  # patterns never cached, e.g. *.lib.tgz
    pcache_link: str = "auto"  # auto | hardlink | copy: how a cached file reaches the work dir
    pcache_wait: float = 600.0  # s to wait for another pilot filling the same file
    pcache_report_max: int = 1000  # cached files named in a job request; above, a digest is sent
    # the payload
    setup: str = ""  # a shell snippet sourced before the payload (release setup)
    appdir: str = ""  # where releases live: one root or several, comma-separated (<root>/<platform>/<release>)
    envsetup: str = ""  # the release setup script: relative to the release's directory, or absolute
    corecount: int = 0  # cores per job if the job does not say
    # analysis transformations: downloaded only from these base URLs
    trf_trusted_urls: list = field(default_factory=list)
    trf_max_size: int = 50  # MB
    trf_timeout: float = 60.0  # s per attempt
    trf_retries: int = 3
    # who the payload runs as (pilot.identity)
    identity: str = "none"  # none | uid | glexec
    sandbox: str = ""  # bubblewrap: hide the pilot's files from the payload
    grid_mapfile: str = ""  # uid: DN (or pattern) -> account or .pool
    uid_command: str = ""  # uid: the switching command ({user} is the account); default setpriv as root
    glexec_path: str = ""  # glexec: the binary, else $GLEXEC_LOCATION/sbin/glexec, ...
    user_proxy_command: str = ""  # prints the user's proxy when the job brought none
    get_proxy_key: bool = False  # uid: ask for the user's proxy with each job too (glexec always does)
    payload_credentials: str = ""  # pilot env variables production payloads get (X509_USER_PROXY, ...)
    # multi-job loop and time
    timefloor: int = 0  # minutes: start no new job after this; 0: no time floor
    maxtime: int = 0  # s the pilot may live; 0: the command line decides
    # limits checked while the payload runs (0 disables a check)
    memory_grace: float = 2.0  # kill when the tree's PSS exceeds minRamCount x grace
    maxrss: int = 0  # MB per core, when the job gives no minRamCount
    maxwdir: int = 0  # MB the work dir may grow to, when the job gives no maxDiskCount
    min_free_disk: int = 200  # MB that must stay free under the work dir
    max_stdout: int = 2048  # MB of payload stdout
    log_gzip_level: int = 1  # gzip level of the log tarball: 1 packs a 500 MB stdout several times faster than 9
    log_stdout_max: int = 100  # MB of the payload's stdout (and stderr) kept in the log tarball, their ends; 0: all
    looping_limit_production: int = 12 * 3600  # s without a file change in the work dir
    looping_limit_analysis: int = 3 * 3600
    looping_limit_min: int = 2 * 3600
    time_margin: int = 600  # s before the pilot's end at which a running payload is stopped
    kill_grace: float = 30.0  # s between SIGTERM and SIGKILL
    # how often each check runs (s)
    memory_check_interval: float = 60.0
    memory_first_check: float = 1.0  # s to the first memory sample, the gap doubling up to the interval (0: off)
    disk_check_interval: float = 300.0
    looping_check_interval: float = 600.0
    stdout_check_interval: float = 60.0
    heartbeat: float = 1800.0
    debug_heartbeat: float = 60.0  # after the server's "debug" command
    # job recovery: where else to look for jobs dead pilots left (besides the pilot's work directory)
    recovery_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, name: str, data: dict[str, Any]) -> QueueConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {"name": name}
        extra: dict[str, Any] = {}
        for key, raw in (data or {}).items():
            spec = known.get(key)
            if spec is None or key in ("name", "extra"):
                extra[key] = raw
                continue
            values[key] = _coerce(key, raw, type(getattr(cls(), key)))
            if key in POSITIVE and values[key] <= 0:
                raise ValueError(f"queue setting {key}={raw!r} must be greater than 0")
            if key == "log_gzip_level" and not 0 <= values[key] <= 9:
                raise ValueError(f"queue setting {key}={raw!r} is not a gzip level (0-9)")
        if extra:
            log.warning("queue %s: settings not used by this pilot: %s", name, ", ".join(sorted(extra)))
        return cls(extra=extra, **values)

    @classmethod
    def load(cls, name: str, path: Optional[Path]) -> QueueConfig:
        """The named queue from a YAML file; defaults when there is no file."""
        if path is None:
            return cls(name=name)
        import yaml  # only when a file is given: keeps start-up light

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read queue configuration {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"queue configuration {path} is not a mapping")
        if "queues" in data:
            queues = data["queues"] or {}
            if name not in queues:
                raise ValueError(f"queue {name!r} not in {path} (has: {', '.join(sorted(queues))})")
            data = queues[name]
        return cls.from_mapping(name, data)

    @property
    def stagein_mover(self) -> str:
        return self.copytoolin or self.copytool

    def movers(self, direction: str) -> list[str]:
        """The ordered mover names for a direction ("in"/"out"): copytoolsin > copytoolin > copytools >
        copytool for stage-in, copytools > copytool for stage-out."""
        if direction == "in":
            chosen = self.copytoolsin or self.copytoolin or self.copytools or self.copytool
        else:
            chosen = self.copytools or self.copytool
        names = [name.strip() for name in chosen.split(",") if name.strip()]
        return list(dict.fromkeys(names))

    def rewrites(self, direction: str) -> list[tuple[str, str]]:
        spec = (self.copyprefixin if direction == "in" and self.copyprefixin else self.copyprefix) or ""
        pairs = []
        for item in spec.split(","):
            if "^" in item:
                old, new = item.split("^", 1)
                pairs.append((old.strip(), new.strip()))
        return pairs


POSITIVE = frozenset({"heartbeat", "debug_heartbeat", "transfer_threads"})  # 0 would mean a flood of updates


def _coerce(key: str, raw: Any, kind: type) -> Any:
    bad = ValueError(f"queue setting {key}={raw!r} is not a valid {kind.__name__}")
    try:
        if kind is bool:
            text = str(raw).strip().lower()
            if isinstance(raw, bool) or text in BOOLEANS:
                return raw if isinstance(raw, bool) else BOOLEANS[text]
            raise bad
        if kind is int:
            number = float(raw)
            if number != int(number):
                raise bad
            return int(number)
        if kind is float:
            return float(raw)
        if kind is list:
            if isinstance(raw, str):
                return [item.strip() for item in raw.split(",") if item.strip()]
            if isinstance(raw, list):
                return raw
            if raw is None:
                return []
            raise bad
        return "" if raw is None else str(raw)
    except (TypeError, ValueError, OverflowError):
        raise bad from None


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass
class PilotConfig:
    """How this pilot was launched: command line (and environment)."""

    queue: str
    dispatcher: str  # a directory (embedded local dispatcher) or an http(s) URL
    workdir: Path
    queue_file: Optional[Path] = None
    dispatcher_api: str = "v1"
    job_label: str = "managed"  # prodSourceLabel asked for
    resource_type: Optional[str] = None
    computing_element: Optional[str] = None
    max_jobs: int = 0  # 0: no limit
    lifetime: int = 0  # s; 0: no limit (the queue's maxtime may set one)
    max_no_job: int = 3  # consecutive "no job" answers before giving up
    no_job_wait: float = 60.0  # s to wait after the first "no job", doubling each time
    no_job_wait_max: float = 600.0
    max_failures: int = 3  # failed jobs in a row before giving up
    stop_file: Optional[Path] = None
    heartbeat: Optional[float] = None  # overrides the queue's
    keep_workdirs: bool = False
    recovery: bool = True  # recover jobs dead pilots left before taking new ones
    lost_heartbeat: float = 0.0  # embedded dispatcher: s without an update before a claimed job is lost
    pilot_id: str = ""  # as sent: `<id>|<version tag>|<version>`
    version_tag: str = "PR"  # PR, RC, RCM, ALRB, PT (pilot/versiontag.py)
    batch_id: Optional[str] = None  # the batch system's job id (Slurm, HTCondor, ...)
    access_point: Optional[Path] = None  # Harvester push mode: the worker's access point
    worker_heartbeat: float = 60.0  # s between the worker's heartbeats in the access point (0: none)
    scheduler_id: str = ""
    harvester_id: Optional[str] = None
    worker_id: Optional[int] = None
    # PanDA server client
    cacert: Optional[str] = None
    capath: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    proxy: Optional[str] = None
    token_file: Optional[str] = None
    origin: Optional[str] = None
    request_timeout: float = 60.0
    retry_budget: float = 600.0
    pcache_report_field: str = ""  # the job request field carrying the cached files to a PanDA server ("": none)

    @property
    def is_remote(self) -> bool:
        return self.dispatcher.startswith(("http://", "https://"))
