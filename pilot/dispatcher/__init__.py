"""How jobs arrive and reports leave: one interface, several back ends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pilot.config import PilotConfig
from pilot.dispatcher.base import Dispatcher, DispatcherError, FailureKind


def make_dispatcher(config: PilotConfig, stopping: threading.Event) -> Dispatcher:
    """The PanDA server for an http(s) URL, else the embedded directory dispatcher; with an access point,
    Harvester's push mode (the job from its files, reports to the server or, without one, to its files; one
    job per worker unless --max-jobs is above 1; after asking the factory for a job, the pilot watches for it
    for --no-job-wait seconds).

    `stopping` shortens the retries once the pilot is told to end (a batch system's SIGTERM leaves
    little time): a request is then retried for a few seconds more and given up; whatever it carried
    stays in the job's journal.
    """
    server = _panda_server(config, stopping) if config.is_remote else None
    if config.access_point is not None:
        from pilot.dispatcher.harvester import HarvesterDispatcher

        return HarvesterDispatcher(config.access_point, reports=server, heartbeat=config.worker_heartbeat,
                                   job_wait=config.no_job_wait, max_jobs=config.max_jobs, stopping=stopping)
    if server is not None:
        return server
    from pilot.dispatcher.local import LocalDispatcher

    return LocalDispatcher(Path(config.dispatcher), lost_heartbeat=config.lost_heartbeat)


def _panda_server(config: PilotConfig, stopping: threading.Event) -> Dispatcher:
    from pilot.dispatcher.panda import PandaConfig, PandaDispatcher  # requests only when needed

    token = Path(config.token_file).read_text().strip() if config.token_file else None

    return PandaDispatcher(
        PandaConfig(
            url=config.dispatcher,
            api=config.dispatcher_api,
            cacert=config.cacert,
            capath=config.capath,
            cert=config.cert,
            key=config.key,
            proxy=config.proxy,
            token=token,
            origin=config.origin,
            timeout=config.request_timeout,
            retry_budget=config.retry_budget,
            cache_report_field=config.pcache_report_field,
        ),
        sleep=StopAwareSleep(stopping),
    )


class StopAwareSleep:
    """The wait between retries: as asked while the pilot runs; once it is stopping, at most a second at
    a time and for `window` seconds in all, then the retry is abandoned."""

    def __init__(self, stopping: threading.Event, window: float = 10.0) -> None:
        self.stopping = stopping
        self.window = window
        self.since: float = 0.0

    def __call__(self, seconds: float) -> None:
        if not self.stopping.wait(seconds):
            return
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since >= self.window:
            raise DispatcherError(FailureKind.TRANSPORT, "retry abandoned: the pilot is stopping")
        time.sleep(min(seconds, 1.0))
