"""Job and FileSpec: the dispatcher's flat job definition, parsed and validated.

The definition is a dictionary of strings. Unset values arrive as "NULL" (or "null", or empty); file
attributes are comma-separated lists matched by position. Names that come from the dispatcher are data,
never paths: anything that could walk out of the work directory is refused here, before it touches the
file system.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from pilot.errors import ErrorCode, PilotError
from pilot.layout import is_reserved
from sitemovers.checksum import Checksum, ChecksumError

NULLS = {"", "null", "none"}
MAX_NAME = 255  # bytes, as file systems count
# Rucio's scope syntax (its schema's SCOPE pattern and SCOPE_LENGTH); a leading '.' would hide the directory
SCOPE = re.compile(r"[a-zA-Z0-9_\-.]{1,25}")
BOOLEAN_WORDS = {"true", "false"}  # a JSON boolean turned into text is not a scope
NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?")  # ASCII digits only: no other scripts' digits, signs, '_' or spaces
MAX_FILE_SIZE = 2**50  # bytes (1 PiB): a larger fsize is a broken definition, not a disk too small


class JobDefinitionError(PilotError):
    """The job definition cannot be run; `panda_id` is set when it was readable."""

    def __init__(self, code: ErrorCode, diag: str, panda_id: Optional[int] = None, attempt_nr: int = 0):
        super().__init__(code, diag)
        self.panda_id = panda_id
        self.attempt_nr = attempt_nr


@dataclass
class FileSpec:
    lfn: str
    kind: str  # input, output, log
    guid: str = ""
    fsize: Optional[int] = None
    checksum: Optional[Checksum] = None
    scope: str = ""
    dataset: str = ""
    ddm_endpoint: str = ""
    token: str = ""  # prodDBlockToken (input) / destinationDBlockToken (output)
    dispatch_dblock: str = ""  # input: the dispatch block
    destination_dblock: str = ""  # output: the destination block

    @property
    def direct_access_forbidden(self) -> bool:
        return self.token.lower() == "local"


@dataclass
class Job:
    panda_id: int
    attempt_nr: int
    transformation: str
    job_pars: str
    inputs: list[FileSpec]
    outputs: list[FileSpec]
    log: FileSpec
    task_id: int = 0
    jobset_id: int = 0
    job_definition_id: int = 0
    prod_source_label: str = "managed"
    prod_user_id: str = ""
    processing_type: str = ""
    home_package: str = ""
    sw_release: str = ""
    cmt_config: str = ""
    core_count: int = 1
    min_ram_count: int = 0  # MB
    max_cpu_count: int = 0  # s
    max_disk_count: int = 0  # MB
    max_walltime: int = 0  # s
    transfer_type: str = ""
    destination_se: str = ""
    resource_type: str = ""
    container_name: str = ""
    n_sent: int = 0
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_analysis(self) -> bool:
        """User (analysis) jobs download their transformation from a URL."""
        return self.transformation.startswith(("http://", "https://")) or self.prod_source_label == "user"

    @property
    def all_outputs(self) -> list[FileSpec]:
        return [*self.outputs, self.log]


def value(raw: dict[str, Any], key: str) -> str:
    """The field as a string, '' when unset (missing, None or NULL)."""
    text = raw.get(key)
    if text is None:
        return ""
    text = str(text).strip()
    return "" if text.lower() in NULLS else text


def check_name(name: str, what: str = "file name") -> str:
    """Refuse a dispatcher-given name that could become a path or a shell/option surprise."""
    bad = ""
    if not name:
        bad = "is empty"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        bad = f"is longer than {MAX_NAME} bytes"
    elif "/" in name or "\\" in name:
        bad = "contains a path separator"
    elif name in (".", ".."):
        bad = "is a relative directory"
    elif any(not c.isprintable() for c in name):
        bad = "contains a control character"
    elif name.startswith("-"):
        bad = "starts with '-'"
    elif is_reserved(name):
        bad = "is reserved for the pilot's own files"
    if bad:
        raise PilotError(ErrorCode.BAD_FILE_NAME, f"{what} {name!r} {bad}")
    return name


def check_scope(scope: str, what: str = "scope") -> str:
    """A scope is a name (check_name) in Rucio's scope syntax, not hidden, not a pilot file's name."""
    check_name(scope, what)
    if not SCOPE.fullmatch(scope):
        raise PilotError(ErrorCode.BAD_FILE_NAME,
                         f"{what} {scope!r} is not a scope (letters, digits, '_', '-', '.'; at most 25)")
    if scope.startswith(".") or scope.lower() in BOOLEAN_WORDS:
        raise PilotError(ErrorCode.BAD_FILE_NAME, f"{what} {scope!r} is not a scope")
    return scope


def parse_number(text: str, what: str, limit: int = 2**63, decimals: bool = True) -> int:
    """A count written in ASCII digits, 0 <= n < limit; a decimal part is dropped ('3600.7'), or refused
    when `decimals` is false (sizes in bytes)."""
    if text.startswith("-") and NUMBER.fullmatch(text[1:]):
        raise PilotError(ErrorCode.CONVERSION_FAILURE, f"{what} {text!r} is negative")
    if len(text) > 40 or not NUMBER.fullmatch(text) or (not decimals and "." in text):
        raise PilotError(ErrorCode.CONVERSION_FAILURE, f"{what} {text!r} is not a number")
    number = int(text.partition(".")[0])
    if number >= limit:
        raise PilotError(ErrorCode.CONVERSION_FAILURE, f"{what} {text!r} is out of range")
    return number


def _int(raw: dict[str, Any], key: str, default: int = 0) -> int:
    text = value(raw, key)
    if not text:
        return default
    return parse_number(text, key)


def check_text(raw: dict[str, Any]) -> None:
    """No key or value may hold a NUL or a lone surrogate: such text cannot be a file name, an argument
    or UTF-8 at all, so the definition is malformed, whichever field it is in."""
    for key, val in raw.items():
        for text in (str(key), val if isinstance(val, str) else str(val)):
            if "\x00" in text:
                raise PilotError(ErrorCode.CONVERSION_FAILURE, f"field {_shown(key)} holds a NUL byte")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise PilotError(ErrorCode.CONVERSION_FAILURE,
                                 f"field {_shown(key)} holds text that is not Unicode (a lone surrogate)") from None


def _shown(key: Any) -> str:
    return ascii(str(key))[:60]


def _list(raw: dict[str, Any], key: str) -> list[str]:
    """A comma list; entries keep their positions ('' for NULL) so lists can be matched."""
    text = value(raw, key)
    if not text:
        return []
    return [value({"v": item}, "v") for item in text.split(",")]


def _files(raw: dict[str, Any], kind: str, columns: dict[str, str], log_name: str = "") -> list[FileSpec]:
    """Build FileSpecs from parallel comma lists; `columns` maps FileSpec attribute -> job key.

    The server lists the log file in outFiles, but some output lists (scopeOut) leave it out: a list one
    entry short is matched to the outputs other than the log.
    """
    lists = {attr: _list(raw, key) for attr, key in columns.items()}
    names = lists.pop("lfn")
    keep = [i for i, name in enumerate(names) if name]  # empty and NULL entries are skipped
    log_at = names.index(log_name) if log_name and log_name in names else -1
    for attr, items in lists.items():
        if items and log_at >= 0 and len(items) == len(names) - 1:
            items.insert(log_at, "")
        if items and len(items) != len(names):
            raise PilotError(
                ErrorCode.NOT_SAME_LENGTH,
                f"{columns[attr]} has {len(items)} entries but {columns['lfn']} has {len(names)}",
            )
    specs = []
    for i in keep:
        spec = FileSpec(lfn=check_name(names[i]), kind=kind)
        for attr, items in lists.items():
            item = items[i] if items else ""
            if not item:
                continue
            if attr == "fsize":
                spec.fsize = parse_number(item, f"size of {spec.lfn}", MAX_FILE_SIZE, decimals=False)
            elif attr == "checksum":
                try:
                    spec.checksum = Checksum.parse(item)
                except ChecksumError as exc:
                    raise PilotError(ErrorCode.UNKNOWN_CHECKSUM_TYPE, f"{spec.lfn}: {exc}") from None
            else:
                setattr(spec, attr, check_scope(item) if attr == "scope" else item)
        specs.append(spec)
    return specs


INPUT_COLUMNS = {
    "lfn": "inFiles",
    "guid": "GUID",
    "fsize": "fsize",
    "checksum": "checksum",
    "scope": "scopeIn",
    "dispatch_dblock": "dispatchDblock",
    "dataset": "realDatasetsIn",
    "token": "prodDBlockToken",
    "ddm_endpoint": "ddmEndPointIn",
}
OUTPUT_COLUMNS = {
    "lfn": "outFiles",
    "destination_dblock": "destinationDblock",
    "dataset": "realDatasets",
    "scope": "scopeOut",
    "ddm_endpoint": "ddmEndPointOut",
    "token": "destinationDBlockToken",
}


def panda_id_of(raw: Any) -> Optional[int]:
    """The job's PandaID if it can be read at all (to report a definition that is otherwise broken)."""
    if not isinstance(raw, dict):
        return None
    text = value(raw, "PandaID")
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 2**63):
        return None
    return int(text)


def parse_job(raw: Any) -> Job:
    """Validate a raw job definition. Raises JobDefinitionError with the code and a one-line diagnostic."""
    panda_id = panda_id_of(raw)
    if panda_id is None:
        shown = value(raw, "PandaID") if isinstance(raw, dict) else type(raw).__name__
        raise JobDefinitionError(ErrorCode.NOT_DEFINED, f"job definition has no valid PandaID ({shown!r})")
    try:
        attempt_nr = _int(raw, "attemptNr")
    except PilotError:
        attempt_nr = 0
    try:
        job = _parse(raw, panda_id)
        check_text(raw)  # after the fields' own checks, which name the problem more closely
        return job
    except PilotError as exc:
        raise JobDefinitionError(exc.code, exc.diag, panda_id, attempt_nr) from None
    except Exception as exc:  # whatever else is wrong with it, the job is reported, not the pilot lost
        raise JobDefinitionError(ErrorCode.CONVERSION_FAILURE, f"unreadable job definition: {exc!r}",
                                 panda_id, attempt_nr) from None


def _parse(raw: dict[str, Any], panda_id: int) -> Job:
    transformation = value(raw, "transformation")
    if not transformation:
        raise PilotError(ErrorCode.NOT_DEFINED, "job definition has no transformation")
    if any(not c.isprintable() for c in transformation):
        raise PilotError(ErrorCode.CONVERSION_FAILURE, "transformation contains a control character")
    inputs = _files(raw, "input", INPUT_COLUMNS)
    log_name = value(raw, "logFile")
    outputs = _files(raw, "output", OUTPUT_COLUMNS, log_name)
    if log_name:
        check_name(log_name, "log file name")
        logs = [spec for spec in outputs if spec.lfn == log_name]
        outputs = [spec for spec in outputs if spec.lfn != log_name]
        log = logs[0] if logs else FileSpec(lfn=log_name, kind="log")
    else:
        log = FileSpec(lfn=f"{panda_id}.job.log.tgz", kind="log")
    log.kind = "log"
    log.guid = value(raw, "logGUID") or log.guid or str(uuid.uuid4())
    scope_log = value(raw, "scopeLog")
    log.scope = check_scope(scope_log, "log scope") if scope_log else log.scope
    seen: set[str] = set()
    for spec in [*inputs, *outputs, log]:
        key = f"{spec.kind == 'input'}:{spec.lfn}"
        if key in seen:
            raise PilotError(ErrorCode.BAD_FILE_NAME, f"file {spec.lfn!r} is listed twice")
        seen.add(key)
    for spec in outputs:
        spec.guid = spec.guid or str(uuid.uuid4())
    core_count = _int(raw, "coreCount", 1)
    return Job(
        panda_id=panda_id,
        attempt_nr=_int(raw, "attemptNr"),
        transformation=transformation,
        job_pars=value(raw, "jobPars"),
        inputs=inputs,
        outputs=outputs,
        log=log,
        task_id=_int(raw, "taskID"),
        jobset_id=_int(raw, "jobsetID"),
        job_definition_id=_int(raw, "jobDefinitionID"),
        prod_source_label=value(raw, "prodSourceLabel") or "managed",
        prod_user_id=value(raw, "prodUserID"),
        processing_type=value(raw, "processingType"),
        home_package=value(raw, "homepackage"),
        sw_release=value(raw, "swRelease"),
        cmt_config=value(raw, "cmtConfig"),
        core_count=max(core_count, 1),
        min_ram_count=_int(raw, "minRamCount"),
        max_cpu_count=_int(raw, "maxCpuCount"),
        max_disk_count=_int(raw, "maxDiskCount"),
        max_walltime=_int(raw, "maxWalltime"),
        transfer_type=value(raw, "transferType"),
        destination_se=value(raw, "destinationSE"),
        resource_type=value(raw, "resource_type"),
        container_name=value(raw, "container_name"),
        n_sent=_int(raw, "nSent"),
        raw={str(k): str(v) for k, v in raw.items()},
    )
