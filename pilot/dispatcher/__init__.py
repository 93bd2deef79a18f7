"""How jobs arrive and reports leave: one interface, several back ends."""

from __future__ import annotations

from pathlib import Path

from pilot.config import PilotConfig
from pilot.dispatcher.base import Dispatcher


def make_dispatcher(config: PilotConfig) -> Dispatcher:
    """The PanDA server for an http(s) URL, else the embedded directory dispatcher."""
    if config.is_remote:
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
            )
        )
    from pilot.dispatcher.local import LocalDispatcher

    return LocalDispatcher(Path(config.dispatcher))
