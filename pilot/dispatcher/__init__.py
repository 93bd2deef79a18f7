"""How jobs arrive and reports leave: one interface, several back ends."""

from __future__ import annotations

import threading
from pathlib import Path

from pilot.config import PilotConfig
from pilot.dispatcher.base import Dispatcher, DispatcherError, FailureKind


def make_dispatcher(config: PilotConfig, stopping: threading.Event) -> Dispatcher:
    """The PanDA server for an http(s) URL, else the embedded directory dispatcher.

    `stopping` cuts a retry wait short when the pilot is told to end (a batch system's SIGTERM leaves
    little time): the request is then given up and whatever it carried stays in the job's journal.
    """
    if config.is_remote:
        from pilot.dispatcher.panda import PandaConfig, PandaDispatcher  # requests only when needed

        token = Path(config.token_file).read_text().strip() if config.token_file else None

        def sleep(seconds: float) -> None:
            if stopping.wait(seconds):
                raise DispatcherError(FailureKind.TRANSPORT, "retry abandoned: the pilot is stopping")

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
            ),
            sleep=sleep,
        )
    from pilot.dispatcher.local import LocalDispatcher

    return LocalDispatcher(Path(config.dispatcher))
