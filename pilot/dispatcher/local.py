"""The embedded default dispatcher: a directory of job definitions.

Layout of the directory:
  *.json                 one job definition per file (the flat dictionary a PanDA server sends), written
                         to another name and renamed to *.json when complete
  pandaJobData.out       a factory's push file (JSON {PandaID: job} or urlencoded), split into *.json
  claimed/               a job file is claimed by renaming it here: atomic, so two pilots never run one job
  rejected/              files that are not a job definition at all, each with a .reason beside it
  history/<PandaID>.jsonl every update the job received, one JSON object a line, as a server would see it
  commands/<PandaID>     an operator's command for that job: "tobekilled" (also when empty) or "softkill"
  history/brokerage.jsonl  each cache-aware choice: the job given to a node that reported its cached files

When the request carries the node's cached files (pilot/cachereport.py), the job with the most input bytes
already cached there is handed out first (pilot/dispatcher/brokerage.py), among the first candidates.

Anyone may write the directory, so every file in it is untrusted: opened without following links or
blocking, checked to be a regular file, read with a cap, parsed with bounded depth.
A claim costs the same with 10 or 50,000 waiting jobs: the directory is listed once into a queue of
candidates that this process works through, and listed again only when the queue runs dry (or is old).

Lost heartbeats (when `lost_heartbeat` is set): as a PanDA server does, a claimed job with no update
for that many seconds is failed ("lost heartbeat") in its history and, while attempts remain (the job's
`maxAttempt`, default 3), offered again as a new job file with the next `attemptNr`; its claimed file
becomes `claimed/<name>.lost-<attempt>`. A pilot that later recovers the old attempt finds the attempt
moved on and only cleans up.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qsl

from pilot.cachereport import CachedFiles
from pilot.dispatcher.base import Command, Dispatcher, DispatcherError, FailureKind, JobRequest, JobStatus, JobUpdate
from pilot.dispatcher.brokerage import cached_input_bytes, prefer_cached
from pilot.errors import one_line
from pilot.fsutil import append_line, atomic_write, atomic_write_json, loads_json, read_capped

log = logging.getLogger(__name__)

PUSH_FILE = "pandaJobData.out"
BROKERAGE = "brokerage.jsonl"
MAX_JOB_FILE = 64 * 2**20  # bytes of one job definition (or push file)
MAX_COMMAND = 4096  # bytes of an operator's command file
MAX_HISTORY = 64 * 2**20  # bytes of one job's history read back


def parse_push_file(text: str) -> list[dict[str, Any]]:
    """Jobs from a factory push file: JSON {PandaID: {job}} or a single {job}, or urlencoded text."""
    text = text.strip()
    if text.startswith("{"):
        data = loads_json(text, max_bytes=MAX_JOB_FILE)
        if isinstance(data, dict) and "PandaID" not in data and all(isinstance(v, dict) for v in data.values()):
            return list(data.values())
        return [data]
    return [dict(parse_qsl(text, keep_blank_values=True))]


FINAL_STATES = frozenset({"finished", "failed", "cancelled", "closed"})
DEFAULT_MAX_ATTEMPTS = 3


@dataclass
class ParseFailure:
    """A job file that did not parse: maybe still being written, so it is tried again before rejection."""

    tries: int
    stamp: tuple[int, int]  # (size, mtime_ns) when it last failed


def _order(name: str) -> tuple[int, str]:
    return (len(name), name)  # numeric order for PandaID names


class LocalDispatcher(Dispatcher):
    name = "local"
    parse_tries = 3  # requests on which a job file failed to parse before it is rejected...
    settle_seconds = 10.0  # ...unchanged, and last modified at least this long ago
    rescan_seconds = 60.0  # a queue of candidates older than this is listed afresh

    def __init__(self, directory: Path, lost_heartbeat: float = 0.0) -> None:
        self.root = Path(directory)
        self.lost_heartbeat = lost_heartbeat  # s without an update before a claimed job is lost; 0: never
        for sub in ("claimed", "rejected", "history", "commands"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._candidates: collections.deque[str] = collections.deque()
        self._listed = 0.0  # monotonic time of the last listing
        self._unparsed: dict[str, ParseFailure] = {}
        self._warned: set[str] = set()  # command files already reported unreadable

    # --- jobs -------------------------------------------------------------------------------------
    def _split_push_file(self) -> None:
        push = self.root / PUSH_FILE
        if not os.path.lexists(push):
            return
        taken = self.root / "claimed" / f"{PUSH_FILE}.{os.getpid()}.{time.time_ns()}"
        try:
            os.rename(push, taken)
        except FileNotFoundError:
            self._check_layout()
            return  # another pilot took it
        try:
            jobs = parse_push_file(read_capped(taken, MAX_JOB_FILE).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            self._reject(taken, f"unreadable push file: {_why(exc)}")
            return
        for number, job in enumerate(jobs):
            name = str(job.get("PandaID", "")) if isinstance(job, dict) else ""
            target = self.root / f"{name}.json"
            if not (name.isascii() and name.isdigit()) or os.path.lexists(target):
                target = self.root / f"push-{time.time_ns()}-{number}.json"
            atomic_write_json(target, job)
        self._candidates.clear()  # new files: list again

    def _check_layout(self) -> None:
        """A rename that found nothing: another pilot took the file, unless our own directories are gone."""
        for path in (self.root, self.root / "claimed"):
            if not path.is_dir():
                raise DispatcherError(FailureKind.SERVER, f"job directory {path} is gone")

    def _list(self) -> None:
        try:
            with os.scandir(self.root) as entries:
                names = [e.name for e in entries if e.name.endswith(".json") and not e.name.startswith(".")]
        except FileNotFoundError:
            raise DispatcherError(FailureKind.SERVER, f"job directory {self.root} is gone") from None
        except OSError as exc:
            raise DispatcherError(FailureKind.SERVER, f"cannot list {self.root}: {exc.strerror}") from None
        names.sort(key=_order)
        self._candidates = collections.deque(names)
        self._listed = time.monotonic()

    def _reject(self, path: Path, reason: str) -> None:
        target = self.root / "rejected" / path.name
        try:
            os.rename(path, target)
            atomic_write(target.with_name(target.name + ".reason"), (one_line(reason, 1000) + "\n").encode())
        except FileNotFoundError:
            self._check_layout()
            return  # another pilot rejected or took it first
        except OSError as exc:
            log.error("cannot reject %s (%s): %s", path.name, reason, exc.strerror)
            return
        log.error("rejected %s: %s", path.name, reason)

    def get_job(self, request: JobRequest) -> Optional[dict[str, str]]:
        self._split_push_file()
        if self.lost_heartbeat > 0:
            self.retry_lost()
        stale = time.monotonic() - self._listed > self.rescan_seconds
        if not self._candidates or stale:
            self._list()
            listed_now = True
        else:
            listed_now = False
        cached = CachedFiles.parse(request.cached_files)
        if cached:
            self._prefer_cached(cached)
        while True:
            if not self._candidates:
                if listed_now:
                    return None
                self._list()  # the queue ran dry: list once more for files added since
                listed_now = True
                if cached:
                    self._prefer_cached(cached)
                continue
            name = self._candidates.popleft()
            job = self._claim(name)
            if job is not None:
                if cached:
                    self._record_choice(request, name, job, cached_input_bytes(job, cached))
                return job

    def _prefer_cached(self, cached: CachedFiles) -> None:
        """The first candidates reordered by the input bytes the asking node has cached (bounded)."""
        paths, _ = prefer_cached([self.root / name for name in self._candidates], cached, self._peek)
        self._candidates = collections.deque(path.name for path in paths)

    def _claim(self, name: str) -> Optional[dict[str, str]]:
        """Read, check and claim one job file; None when it is gone, not ready or rejected."""
        path = self.root / name
        try:
            data = read_capped(path, MAX_JOB_FILE)
        except FileNotFoundError:
            self._check_layout()
            return None  # claimed by another pilot
        except OSError as exc:  # a link, a FIFO, a directory, too large, unreadable
            self._reject(path, f"not a job file: {_why(exc)}")
            return None
        try:
            job = loads_json(data, max_bytes=MAX_JOB_FILE)
        except ValueError as exc:
            if self._still_coming(path, name):
                return None
            self._reject(path, f"not a JSON job definition: {_why(exc)}")
            return None
        self._unparsed.pop(name, None)
        if not isinstance(job, dict):
            self._reject(path, f"a job definition is a JSON object, not {type(job).__name__}")
            return None
        claimed = self.root / "claimed" / name
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            self._check_layout()
            return None  # another pilot claimed it between our read and our rename
        except OSError as exc:
            raise DispatcherError(FailureKind.SERVER, f"cannot claim {name}: {exc.strerror}") from None
        os.utime(claimed)  # the claim's time: a job that never reports is lost from then on
        log.info("claimed job file %s", name)
        return {str(k): "NULL" if v is None else (v if isinstance(v, str) else _text(v)) for k, v in job.items()}

    def _still_coming(self, path: Path, name: str) -> bool:
        """Whether a file that does not parse may still be being written: it is rejected only after it
        failed on `parse_tries` requests, unchanged, and was last written `settle_seconds` ago."""
        try:
            info = os.lstat(path)
        except OSError:
            return True  # gone meanwhile: nothing to reject
        stamp = (info.st_size, info.st_mtime_ns)
        failure = self._unparsed.get(name)
        if failure is None or failure.stamp != stamp:
            failure = self._unparsed[name] = ParseFailure(0, stamp)
        failure.tries += 1
        settled = time.time() - info.st_mtime >= self.settle_seconds
        if failure.tries >= self.parse_tries and settled:
            del self._unparsed[name]
            return False
        log.warning("job file %s does not parse yet (try %d); tried again later", name, failure.tries)
        return True

    @staticmethod
    def _peek(path: Path) -> Optional[dict[str, Any]]:
        """A job file's definition without claiming it (None when unreadable: it is dealt with when claimed)."""
        try:
            job = loads_json(read_capped(path, MAX_JOB_FILE))
        except (OSError, ValueError):
            return None
        return job if isinstance(job, dict) else None

    def _record_choice(self, request: JobRequest, name: str, job: dict[str, Any], cached: int) -> None:
        record = {"time": time.time(), "node": request.node, "job_file": name, "PandaID": _number(job.get("PandaID")),
                  "cached_input_bytes": cached, "node_cached_files": (request.cached_files or {}).get("count")}
        try:
            append_line(self.root / "history" / BROKERAGE, json.dumps(record, sort_keys=True))
        except OSError as exc:
            log.warning("brokerage record not written: %s", exc)

    def reject(self, job: dict[str, Any], diag: str) -> None:
        """A definition too broken to report (no PandaID): leave the reason for the operator."""
        name = f"unidentified-{time.time_ns()}.json"
        try:
            atomic_write_json(self.root / "rejected" / name, job)
            atomic_write(self.root / "rejected" / (name + ".reason"), (one_line(diag, 1000) + "\n").encode())
        except (OSError, ValueError) as exc:
            log.error("cannot keep the rejected definition %s: %s", name, exc)

    # --- reports ----------------------------------------------------------------------------------
    def _history(self, job_id: int) -> Path:
        return self.root / "history" / f"{int(job_id)}.jsonl"

    def _command(self, job_id: int) -> Command:
        """The operator's command for the job; a file that cannot be read is logged and ignored."""
        path = self.root / "commands" / str(int(job_id))
        try:
            text = read_capped(path, MAX_COMMAND).decode("utf-8").strip()
        except FileNotFoundError:
            return Command.NONE
        except (OSError, UnicodeDecodeError) as exc:
            if path.name not in self._warned:
                self._warned.add(path.name)
                log.warning("operator command file %s ignored: %s", path, _why(exc))
            return Command.NONE
        return Command.parse(text) if text else Command.KILL

    def update_job(self, update: JobUpdate) -> Command:
        record = {"time": time.time(), **update.fields(), **update.extra}
        path = self._history(update.job_id)
        try:
            append_line(path, json.dumps(record, sort_keys=True, default=str))
        except (OSError, ValueError) as exc:
            raise DispatcherError(FailureKind.SERVER, f"cannot write the job's history {path}: {_why(exc)}") from None
        return self._command(update.job_id)

    def history(self, job_id: int) -> list[dict[str, Any]]:
        try:
            lines = read_capped(self._history(job_id), MAX_HISTORY).decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DispatcherError(FailureKind.SERVER, f"cannot read the job's history: {_why(exc)}") from None
        records = []
        for line in lines:
            try:
                record = loads_json(line) if line.strip() else None
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
        return records

    # --- lost heartbeats ------------------------------------------------------------------------------
    def retry_lost(self, now: Optional[float] = None) -> list[int]:
        """Fail the claimed jobs whose pilot went silent and offer each again with the next attemptNr
        while attempts remain; returns their PandaIDs. Two pilots never handle one job: the claimed
        file is renamed away first."""
        now = time.time() if now is None else now
        lost = []
        for claimed in (self.root / "claimed").glob("*.json"):
            try:
                job = loads_json(read_capped(claimed, MAX_JOB_FILE), max_bytes=MAX_JOB_FILE)
                panda_id, attempt = int(job["PandaID"]), int(job.get("attemptNr") or 1)
                mine = [h for h in self.history(panda_id) if h.get("attempt_nr", attempt) == attempt]
                last = mine[-1] if mine else {}
                if last.get("job_status") in FINAL_STATES:
                    continue
                active = max(float(last.get("time", 0.0)), claimed.stat().st_mtime)
            except (OSError, ValueError, KeyError, TypeError, DispatcherError):  # an unreadable history too
                continue
            if now - active < self.lost_heartbeat:
                continue
            try:
                os.rename(claimed, claimed.with_name(f"{claimed.name}.lost-{attempt}"))
            except FileNotFoundError:
                continue  # another pilot handles it
            diag = f"lost heartbeat: no update for {int(now - active)} s"
            append_line(self._history(panda_id), json.dumps(
                {"time": now, "job_id": panda_id, "job_status": "failed", "attempt_nr": attempt,
                 "job_dispatcher_error_diag": diag}, sort_keys=True))
            maximum = _int(job.get("maxAttempt"), DEFAULT_MAX_ATTEMPTS)
            if attempt < maximum:
                atomic_write_json(self.root / f"{panda_id}.json", {**job, "attemptNr": str(attempt + 1)})
                log.warning("job %d attempt %d: %s; offered again as attempt %d", panda_id, attempt, diag,
                            attempt + 1)
            else:
                log.warning("job %d attempt %d: %s; no attempts left", panda_id, attempt, diag)
            lost.append(panda_id)
        return lost

    def job_status(self, job_id: int) -> JobStatus:
        history = self.history(job_id)
        if not history:
            return JobStatus(job_id, "unknown")
        last = history[-1]
        return JobStatus(job_id, last.get("job_status", "unknown"), last.get("attempt_nr"), self._command(job_id))


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _number(text: Any) -> Any:
    return int(text) if isinstance(text, str) and text.isascii() and text.isdigit() else text


def _text(value: Any) -> str:
    """A JSON value that is not a string, as the text a server would have sent."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _why(exc: BaseException) -> str:
    """A one-line reason for a failed read: the OS's words for OS errors."""
    return one_line(exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
