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
The pilot's requests to the factory, as Harvester's monitor reads them:
  worker_requestjob.json  a request for a job ({"nJobs": 1}): when there is no job file at the start (late
                          binding), and after each job while the worker may take more (max_jobs > 1). The
                          pilot watches for the job Harvester feeds (pandaJobData.out, complete once
                          worker_pandaids.json names it), and takes the request back once it has the job (the
                          monitor reads a request left in place as one for a further job) or when it gives up
  worker_heartbeat.json   rewritten every `heartbeat` seconds by a thread of the pilot's own, from its start
                          to its end; only its mtime counts (queue `messenger.worker_heartbeat`, minutes):
                          a pilot that is stopped or gone goes stale and Harvester kills its worker
  kill_worker.json        written when the pilot ends: the worker has nothing more to do, and Harvester ends
                          its batch job (scancel) if something still holds it
Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import threading
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
    panda_ids: str = "worker_pandaids.json"
    heartbeat: str = "worker_heartbeat.json"
    kill_worker: str = "kill_worker.json"


# JobUpdate attribute -> Harvester's worker attribute (the legacy names, which it maps to the v1 ones)
ATTRIBUTES = {name: legacy for name, legacy in UPDATE_JOB_FIELDS.items()
              if name not in ("job_id", "job_status", "job_output_report", "meta_data")}
FINAL = ("finished", "failed")


class WorkerHeartbeat:
    """The worker's heartbeat for the factory: `path` rewritten every `interval` seconds by a thread of its
    own, so that it stays fresh through long steps and goes stale only when the pilot is stopped or gone."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        try:
            atomic_write_json(self.path, {"time": time.time()})
        except OSError as exc:
            log.warning("worker heartbeat %s not written: %s", self.path, exc.strerror)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


class HarvesterDispatcher(Dispatcher):
    name = "harvester"

    def __init__(self, access_point: Path, reports: Optional[Dispatcher] = None, files: Files = Files(),
                 heartbeat: float = 60.0, job_wait: float = 0.0, max_jobs: int = 1,
                 stopping: Optional[threading.Event] = None) -> None:
        """`heartbeat`: seconds between heartbeats (0: none); `job_wait`: seconds to watch for the job the
        factory feeds after the pilot asked for one, before the pilot counts a 'no job'; `max_jobs`: jobs
        this worker takes (after the first, each is asked for); `stopping` ends the watch (the pilot stops)."""
        self.root = Path(access_point)
        self.reports = reports  # the PanDA server (truePilot true), or None: report through files
        self.files = files
        self.jobs: dict[int, dict[str, Any]] = {}  # the jobs handed out, by PandaID
        self.requested = False
        self.job_wait = job_wait
        self.max_jobs = max(1, max_jobs)
        self.stopping = stopping or threading.Event()
        self.heartbeat = WorkerHeartbeat(self.root / files.heartbeat, heartbeat) if heartbeat > 0 else None
        if self.heartbeat is not None:
            self.heartbeat.start()

    # --- the job ------------------------------------------------------------------------------------
    def get_job(self, request: JobRequest) -> Optional[dict[str, str]]:
        if len(self.jobs) >= self.max_jobs:
            return None
        job = None if self.requested else self._fed_job()
        if job is None:  # none yet (late binding), or the one there has run: ask the factory, watch for it
            self._request_job(request)
            deadline = time.monotonic() + self.job_wait
            while (job := self._fed_job()) is None and time.monotonic() < deadline:
                if self.stopping.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                    return None
            if job is None:
                return None
        try:
            self.jobs[int(job.get("PandaID", ""))] = job
        except ValueError:
            pass  # the pilot rejects a definition without a PandaID
        log.info("job %s from the factory's %s", job.get("PandaID"), self.root / self.files.job)
        self._withdraw_request()  # answered: left in place it would ask for a further job
        return job

    def _fed_job(self) -> Optional[dict[str, Any]]:
        """The job in the job file when it is one this pilot has not taken (None: no file, or a job taken).
        A job fed on request counts only once the factory lists it in its PandaIDs file, which Harvester
        writes after the job file (that one it writes in place: it may be read half-written)."""
        path = self.root / self.files.job
        try:
            data = read_capped(path, JOB_FILE_CAP)
        except FileNotFoundError:
            return None
        except UntrustedFile as exc:
            raise DispatcherError(FailureKind.PROTOCOL, f"job file {path}: {exc}") from None
        if self.requested and not self._listed_new():
            return None
        try:
            jobs = parse_push_file(data.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise DispatcherError(FailureKind.PROTOCOL, f"job file {path} is not JSON nor urlencoded: {exc}") from None
        if len(jobs) != 1 or not isinstance(jobs[0], dict):
            raise DispatcherError(FailureKind.PROTOCOL, f"job file {path} holds {len(jobs)} jobs, not one")
        if str(jobs[0].get("PandaID", "")) in map(str, self.jobs):
            return None
        return jobs[0]

    def _listed_new(self) -> bool:
        """Whether the factory's PandaIDs file names a job this pilot has not taken."""
        try:
            listed = json.loads(read_capped(self.root / self.files.panda_ids, 1 << 20))
        except (FileNotFoundError, UntrustedFile, ValueError):
            return False
        return isinstance(listed, list) and any(str(i) not in map(str, self.jobs) for i in listed)

    def _request_job(self, request: JobRequest) -> None:
        """Ask the factory for a job (once per job)."""
        if not self.requested:
            atomic_write_json(self.root / self.files.request_job,
                              {"nJobs": request.n_jobs, "node": request.node, "time": time.time()})
            self.requested = True
            log.info("no new job in %s: asked the factory for a job (%s)", self.root, self.files.request_job)

    def _withdraw_request(self) -> None:
        if self.requested:
            (self.root / self.files.request_job).unlink(missing_ok=True)
            self.requested = False

    # --- reports ------------------------------------------------------------------------------------
    def update_job(self, update: JobUpdate) -> Command:
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
        """The pilot ends: a request still open is taken back, the heartbeat stops and the factory is asked to
        end the worker (its batch job may hold the allocation on)."""
        self._withdraw_request()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        reason = f"the pilot ends after job {', '.join(map(str, self.jobs))}" if self.jobs else "no job received"
        try:
            atomic_write_json(self.root / self.files.kill_worker, {"time": time.time(), "reason": reason})
        except OSError as exc:
            log.warning("kill request %s not written: %s", self.files.kill_worker, exc.strerror)
        if self.reports is not None:
            self.reports.close()


def _local_path(surl: str) -> str:
    parsed = urlparse(surl)
    return parsed.path if parsed.scheme == "file" else surl
