"""The two-phase contract for latency: ask a prepare_phase mover for every input at once (a tape recall, a
stager), then poll until all are online, before any copy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pilot.errors import ErrorCode, PilotError
from pilot.stagecodes import error_code
from sitemovers.base import Direction, SiteMover, TransferError


def prepare_inputs(mover: SiteMover, urls: list[str], timeout: float, cancel: threading.Event,
                   sleep: Callable[[float], Any] = time.sleep) -> None:
    """Return once every URL is online; a PilotError when cancelled, after `timeout` s, or on a failure."""
    if not mover.prepare_phase:
        return
    try:
        mover.prepare(urls)
        deadline = time.monotonic() + timeout
        wait = 1.0
        while True:
            online = mover.poll(urls)
            pending = [url for url in urls if not online.get(url)]
            if not pending:
                return
            if cancel.is_set():
                raise PilotError(ErrorCode.STAGEIN_FAILED, "stage-in interrupted while inputs were prepared")
            if time.monotonic() >= deadline:
                raise PilotError(ErrorCode.EXCEEDED_MAX_WAIT,
                                 f"{len(pending)} input(s) not online after {timeout:.0f} s, e.g. {pending[0]}")
            sleep(wait)
            wait = min(60.0, wait * 2)
    except TransferError as exc:
        raise PilotError(error_code(Direction.IN, exc), exc.diag) from None
