"""The pilot's command line with gates: a test can stop the pilot at an exact point of a job and SIGKILL it.

Test code only (nothing of it is in the package, and the pilot itself reads no test switch):
`python -m tests.gated_pilot run|recover ...` is `pandapilot run|recover ...` with
- a site mover `gated` added through `Registry(extra=...)` (the queue's `copytool`/`copytoolin` name
  it): the local mover, with gates at the start of each copy and in its middle (the copy's cancel flag
  is asked between chunks of 1 MiB; the gate opens after the second chunk, so a partial file exists);
- the final report's sender wrapped: a gate before it (the log is shipped, nothing is sent yet), and one
  after the dispatcher took the report but before the pilot sees the answer (the report is "in flight").
A gate named P is armed when the file `<$PILOT_TEST_GATES>/P.armed` exists. The pilot reaching an armed
gate renames it to `P.reached` (once: a later pilot passes) and then waits forever, so the test waits for
`P.reached` and kills the pilot there: no sleeping, no timing luck. Gate names: `get-start`,
`get-mid`, `put-start-<lfn>`, `put-mid-<lfn>`, `before-final`, `final-in-flight`. Each final report
sent is also counted in `<$PILOT_TEST_GATES>/final-requests`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

GATES_ENV = "PILOT_TEST_GATES"
FINAL_REQUESTS = "final-requests"  # in the gates directory: one line per final report the pilots sent


def gate(point: str) -> None:
    root = os.environ.get(GATES_ENV)
    if not root:
        return
    try:
        os.rename(Path(root) / f"{point}.armed", Path(root) / f"{point}.reached")
    except FileNotFoundError:
        return
    while True:  # the test kills this pilot here
        time.sleep(3600)


class _MidCopy:
    """A cancel flag that opens gate `point` the third time it is asked (two chunks copied)."""

    def __init__(self, point: str, cancel: Optional[threading.Event]) -> None:
        self.point, self.cancel, self.asked = point, cancel, 0

    def is_set(self) -> bool:
        self.asked += 1
        if self.asked == 3:
            gate(self.point)
        return self.cancel is not None and self.cancel.is_set()


def _registry() -> Any:
    from sitemovers.local import LocalSiteMover
    from sitemovers.registry import Registry

    class GatedMover(LocalSiteMover):
        name = "gated"

        def fetch(self, source, tmp, expected, cancel):  # type: ignore[no-untyped-def]
            gate("get-start")
            return super().fetch(source, tmp, expected, _MidCopy("get-mid", cancel))  # type: ignore[arg-type]

        def send(self, source, tmp_url, expected, cancel):  # type: ignore[no-untyped-def]
            gate(f"put-start-{expected.lfn}")
            return super().send(source, tmp_url, expected,
                                _MidCopy(f"put-mid-{expected.lfn}", cancel))  # type: ignore[arg-type]

    return Registry(extra={"gated": GatedMover})


def _gate_the_final_report() -> None:
    import pilot.jobrun

    send_final = pilot.jobrun.send_final

    class InFlight:
        def __init__(self, dispatcher: Any) -> None:
            self.dispatcher = dispatcher

        def update_job(self, update: Any) -> Any:
            root = os.environ.get(GATES_ENV)
            if root:  # every final report sent, counted by the test: one line each, before it goes out
                with open(Path(root) / FINAL_REQUESTS, "a") as handle:
                    handle.write(f"{update.job_id} {update.job_status}\n")
            answer = self.dispatcher.update_job(update)
            gate("final-in-flight")
            return answer

    def gated(dispatcher: Any, identity: Any, report: Any, journal: Any = None) -> bool:
        gate("before-final")
        return send_final(InFlight(dispatcher), identity, report, journal)

    pilot.jobrun.send_final = gated  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    from pilot import cli

    _gate_the_final_report()
    return cli.main(argv, registry=_registry())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
