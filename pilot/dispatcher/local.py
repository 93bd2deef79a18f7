"""The embedded default dispatcher: a directory of job definitions.

Layout of the directory:
  *.json                 one job definition per file (the flat dictionary a PanDA server sends)
  pandaJobData.out       a factory's push file (JSON {PandaID: job} or urlencoded), split into *.json
  claimed/               a job file is claimed by renaming it here: atomic, so two pilots never run one job
  rejected/              files that are not a job definition at all, each with a .reason beside it
  history/<PandaID>.jsonl every update the job received, one JSON object a line, as a server would see it
  commands/<PandaID>     an operator's command for that job: "tobekilled" (also when empty) or "softkill"
  history/brokerage.jsonl  each cache-aware choice: the job given to a node that reported its cached files

When the request carries the node's cached files (pilot/cachereport.py), the job with the most input bytes
already cached there is handed out first (pilot/dispatcher/brokerage.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qsl

from pilot.cachereport import CachedFiles
from pilot.dispatcher.base import Command, Dispatcher, JobRequest, JobStatus, JobUpdate
from pilot.dispatcher.brokerage import cached_input_bytes, prefer_cached
from pilot.fsutil import append_line, atomic_write, atomic_write_json, loads_json, read_capped

log = logging.getLogger(__name__)

PUSH_FILE = "pandaJobData.out"
BROKERAGE = "brokerage.jsonl"
MAX_JOB_FILE = 16 * 2**20  # a job definition looked at for brokerage is read with this cap


def parse_push_file(text: str) -> list[dict[str, Any]]:
    """Jobs from a factory push file: JSON {PandaID: {job}} or a single {job}, or urlencoded text."""
    text = text.strip()
    if text.startswith("{"):
        data = json.loads(text)
        if isinstance(data, dict) and "PandaID" not in data and all(isinstance(v, dict) for v in data.values()):
            return list(data.values())
        return [data]
    return [dict(parse_qsl(text, keep_blank_values=True))]


class LocalDispatcher(Dispatcher):
    name = "local"

    def __init__(self, directory: Path) -> None:
        self.root = Path(directory)
        for sub in ("claimed", "rejected", "history", "commands"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- jobs -------------------------------------------------------------------------------------
    def _split_push_file(self) -> None:
        push = self.root / PUSH_FILE
        if not push.exists():
            return
        taken = self.root / "claimed" / f"{PUSH_FILE}.{os.getpid()}.{time.time_ns()}"
        try:
            os.rename(push, taken)
        except FileNotFoundError:
            return  # another pilot took it
        try:
            jobs = parse_push_file(taken.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            self._reject(taken, f"unreadable push file: {exc}")
            return
        for number, job in enumerate(jobs):
            name = str(job.get("PandaID", "")) if isinstance(job, dict) else ""
            target = self.root / f"{name}.json"
            if not (name.isascii() and name.isdigit()) or target.exists():
                target = self.root / f"push-{time.time_ns()}-{number}.json"
            atomic_write_json(target, job)

    def _reject(self, path: Path, reason: str) -> None:
        target = self.root / "rejected" / path.name
        os.replace(path, target)
        atomic_write(target.with_name(target.name + ".reason"), (reason + "\n").encode())
        log.error("rejected %s: %s", path.name, reason)

    def get_job(self, request: JobRequest) -> Optional[dict[str, str]]:
        self._split_push_file()
        paths = sorted(self.root.glob("*.json"), key=lambda p: (len(p.name), p.name))
        cached = CachedFiles.parse(request.cached_files)
        if cached:
            paths, _ = prefer_cached(paths, cached, self._peek)
        for path in paths:
            claimed = self.root / "claimed" / path.name
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # claimed by another pilot first
            try:
                job = json.loads(claimed.read_text())
            except (ValueError, UnicodeDecodeError, OSError) as exc:
                self._reject(claimed, f"not a JSON job definition: {exc}")
                continue
            if not isinstance(job, dict):
                self._reject(claimed, f"a job definition is a JSON object, not {type(job).__name__}")
                continue
            log.info("claimed job file %s", path.name)
            if cached:
                self._record_choice(request, path.name, job, cached_input_bytes(job, cached))
            return {str(k): "NULL" if v is None else str(v) for k, v in job.items()}
        return None

    @staticmethod
    def _peek(path: Path) -> Optional[dict[str, Any]]:
        """A job file's definition without claiming it (None when unreadable: it is dealt with when claimed)."""
        try:
            job = loads_json(read_capped(path, MAX_JOB_FILE))
        except (OSError, ValueError):
            return None
        return job if isinstance(job, dict) else None

    def _record_choice(self, request: JobRequest, name: str, job: dict[str, Any], cached: int) -> None:
        record = {"time": time.time(), "node": request.node, "job_file": name, "PandaID": job.get("PandaID"),
                  "cached_input_bytes": cached, "node_cached_files": (request.cached_files or {}).get("count")}
        try:
            append_line(self.root / "history" / BROKERAGE, json.dumps(record, sort_keys=True))
        except OSError as exc:
            log.warning("brokerage record not written: %s", exc)

    def reject(self, job: dict[str, Any], diag: str) -> None:
        """A definition too broken to report (no PandaID): leave the reason for the operator."""
        name = f"unidentified-{time.time_ns()}.json"
        atomic_write_json(self.root / "rejected" / name, job)
        atomic_write(self.root / "rejected" / (name + ".reason"), (diag + "\n").encode())

    # --- reports ----------------------------------------------------------------------------------
    def _history(self, job_id: int) -> Path:
        return self.root / "history" / f"{int(job_id)}.jsonl"

    def _command(self, job_id: int) -> Command:
        path = self.root / "commands" / str(int(job_id))
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return Command.NONE
        return Command.parse(text) if text else Command.KILL

    def update_job(self, update: JobUpdate) -> Command:
        record = {"time": time.time(), **update.fields(), **update.extra}
        append_line(self._history(update.job_id), json.dumps(record, sort_keys=True))
        return self._command(update.job_id)

    def history(self, job_id: int) -> list[dict[str, Any]]:
        try:
            lines = self._history(job_id).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def job_status(self, job_id: int) -> JobStatus:
        history = self.history(job_id)
        if not history:
            return JobStatus(job_id, "unknown")
        last = history[-1]
        return JobStatus(job_id, last.get("job_status", "unknown"), last.get("attempt_nr"), self._command(job_id))
