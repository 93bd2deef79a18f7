"""Harvester push mode: the job arrives in files the factory wrote into the worker's access point.

Harvester (mapType OneToOne, SharedFileMessenger) takes the job from the server and writes it into the
worker's access point before it submits the pilot:
  pandaJobData.out        the job: JSON {PandaID: job} or the urlencoded flat dictionary
With `truePilot: true` the pilot reports to the server itself (`reports` is the PanDA server). With
`truePilot: false` it reports through files that Harvester's monitor reads back and its propagator sends:
  worker_attributes.json  the job's attributes by their legacy names (jobStatus, transExitCode,
                          pilotErrorCode, ...); jobStatus finished/failed makes the job final
  jobReport.json          the payload's job report (sent as metaData)
  event_status.dump.json  {PandaID: [{path, type: output|log, fsize, chksum, guid}]}: the outputs and the
                          log for Harvester's stager, from which it builds the job's output report
The pilot's requests to the factory: worker_requestjob.json (late binding: no job file yet, send one),
worker_heartbeat.json (its mtime is the worker's heartbeat), kill_worker.json (end this worker: the pilot
stops without having received a job). Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from pilot.dispatcher.base import Command, Dispatcher, DispatcherError, FailureKind, JobRequest, JobStatus, JobUpdate
from pilot.dispatcher.local import PUSH_FILE, parse_push_file
from pilot.dispatcher.panda import UPDATE_JOB_FIELDS
from pilot.fsutil import UntrustedFile, atomic_write_json, read_capped

log = logging.getLogger(__name__)

JOB_FILE_CAP = 16 << 20  # bytes of a job file the pilot reads at most


@dataclass(frozen=True)
class Files:
    """The names of Harvester's [payload_interaction] settings (its defaults)."""

    job: str = PUSH_FILE
    attributes: str = "worker_attributes.json"
    job_report: str = "jobReport.json"
    outputs: str = "event_status.dump.json"
    request_job: str = "worker_requestjob.json"
    heartbeat: str = "worker_heartbeat.json"
    kill_worker: str = "kill_worker.json"


# JobUpdate attribute -> Harvester's worker attribute (the legacy names, which it maps to the v1 ones)
ATTRIBUTES = {name: legacy for name, legacy in UPDATE_JOB_FIELDS.items()
              if name not in ("job_id", "job_status", "job_output_report", "meta_data")}
FINAL = ("finished", "failed")


class HarvesterDispatcher(Dispatcher):
    name = "harvester"

    def __init__(self, access_point: Path, reports: Optional[Dispatcher] = None, files: Files = Files()) -> None:
        self.root = Path(access_point)
        self.reports = reports  # the PanDA server (truePilot true), or None: report through files
        self.files = files
        self.jobs: dict[int, dict[str, Any]] = {}  # the jobs handed out, by PandaID
        self.requested = False

    # --- the job ------------------------------------------------------------------------------------
    def get_job(self, request: JobRequest) -> Optional[dict[str, str]]:
        if self.jobs:
            return None  # one job per worker (OneToOne)
        path = self.root / self.files.job
        try:
            data = read_capped(path, JOB_FILE_CAP)
        except FileNotFoundError:
            self._request_job(request)
            return None
        except UntrustedFile as exc:
            raise DispatcherError(FailureKind.PROTOCOL, f"job file {path}: {exc}") from None
        try:
            jobs = parse_push_file(data.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise DispatcherError(FailureKind.PROTOCOL, f"job file {path} is not JSON nor urlencoded: {exc}") from None
        if len(jobs) != 1 or not isinstance(jobs[0], dict):
            raise DispatcherError(FailureKind.PROTOCOL, f"job file {path} holds {len(jobs)} jobs, not one")
        job = jobs[0]
        try:
            self.jobs[int(job.get("PandaID", ""))] = job
        except ValueError:
            pass  # the pilot rejects a definition without a PandaID
        log.info("job %s from the factory's %s", job.get("PandaID"), path)
        return job

    def _request_job(self, request: JobRequest) -> None:
        """Late binding: ask the factory for a job (once); the pilot waits as after 'no job'."""
        if not self.requested:
            atomic_write_json(self.root / self.files.request_job,
                              {"nJobs": request.n_jobs, "node": request.node, "time": time.time()})
            self.requested = True
            log.info("no job file in %s yet: asked the factory for a job (%s)", self.root, self.files.request_job)

    # --- reports ------------------------------------------------------------------------------------
    def update_job(self, update: JobUpdate) -> Command:
        atomic_write_json(self.root / self.files.heartbeat, {"time": time.time(), "jobStatus": update.job_status})
        if self.reports is not None:
            return self.reports.update_job(update)
        if update.job_status in FINAL:
            self._write_final_files(update)
        attributes = {ATTRIBUTES[k]: v for k, v in update.fields().items() if k in ATTRIBUTES}
        attributes["jobStatus"] = update.job_status
        atomic_write_json(self.root / self.files.attributes, attributes)  # last: Harvester acts on jobStatus
        return Command.NONE

    def _write_final_files(self, update: JobUpdate) -> None:
        if update.meta_data:
            try:
                atomic_write_json(self.root / self.files.job_report, json.loads(update.meta_data))
            except ValueError:
                log.warning("the payload's job report is not JSON: not passed to the factory")
        log_name = self.jobs.get(update.job_id, {}).get("logFile", "")
        entries = [{"path": _local_path(f.get("surl", "")) or lfn, "type": "log" if lfn == log_name else "output",
                    "fsize": int(f["fsize"]), "chksum": str(f["adler32"]), "guid": f["guid"]}
                   for lfn, f in (update.job_output_report or {}).items()]
        atomic_write_json(self.root / self.files.outputs, {str(update.job_id): entries})

    def job_status(self, job_id: int) -> JobStatus:
        if self.reports is not None:
            return self.reports.job_status(job_id)
        return JobStatus(job_id, "unknown")

    def close(self) -> None:
        if not self.jobs:
            atomic_write_json(self.root / self.files.kill_worker, {"time": time.time(), "reason": "no job received"})
        if self.reports is not None:
            self.reports.close()


def _local_path(surl: str) -> str:
    parsed = urlparse(surl)
    return parsed.path if parsed.scheme == "file" else surl
