"""One pass of panda-server's Adder (run with the panda-server venv's python, PANDA_HOME set).

``python -m pandaserver.daemons.scripts.add_main 0 1`` loops 50 times with random sleeps of up to
10 s between loops (minutes per call), so the harness runs the same steps once, in process: list the
job output reports the server stored at ``update_job``/``updateJob`` finished/failed time
(``listJobOutputReport`` with no grace period), lock each one, and run ``AdderGen`` on it, which
moves the job from ``holding`` to ``finished``/``failed`` in jobsArchived4 and updates its file
rows, exactly as the daemon's ``AdderThread.run`` does. Same code path in 0.8.1 and 1.0.4.

Prints one JSON line: {"processed": [[PandaID, job_status, attempt_nr], ...]}.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    # add_main imports TaskBufferInterface, whose import sets JobSpec/FileSpec.reserveChangedState.
    # With it, changed file attributes (fsize, checksum, status, GUID) survive pickling to a DB child
    # process (ConBridge/TaskBufferInterface); without it those file rows are silently not updated.
    import pandaserver.taskbuffer.TaskBufferInterface  # noqa: F401
    from pandaserver.brokerage.SiteMapper import SiteMapper
    from pandaserver.config import panda_config
    from pandaserver.dataservice.adder_gen import AdderGen
    from pandaserver.taskbuffer.TaskBuffer import taskBuffer

    requester = f"adder_once-{os.getpid()}"
    # useTimeout=False: a direct DB connection instead of a ConBridge child process (whose
    # teardown alone takes ~15 s); the Adder logic is the same.
    taskBuffer.init(panda_config.dbhost, panda_config.dbpasswd, nDBConnection=1, useTimeout=False, requester=requester)
    site_mapper = SiteMapper(taskBuffer)
    lock_interval = 10  # minutes, as in add_main
    retry_interval = 1
    reports = (
        taskBuffer.listJobOutputReport(only_unlocked=True, time_limit=lock_interval, limit=1000, grace_period=0) or []
    )
    processed = []
    pid = f"adder_once-{os.getpid()}"
    for panda_id, job_status, attempt_nr, _time_stamp in reports:
        if not taskBuffer.lockJobOutputReport(
            panda_id=panda_id, attempt_nr=attempt_nr, pid=pid, time_limit=lock_interval
        ):
            continue
        adder = AdderGen(
            taskBuffer,
            panda_id,
            job_status,
            attempt_nr,
            ignore_tmp_error=True,
            siteMapper=site_mapper,
            pid=pid,
            prelock_pid=pid,
            lock_offset=lock_interval - retry_interval,
        )
        adder.run()
        processed.append([panda_id, job_status, attempt_nr])
    taskBuffer.cleanup(requester=requester)
    print(json.dumps({"processed": processed}), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # the server's modules leave non-daemon threads behind; do not wait for them
    os._exit(code)
