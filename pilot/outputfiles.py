"""The outputs the payload made: each checked before it is shipped (`checked_output`), and the report of
what was shipped, as the server's job_output_report wants it (`output_report`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pilot.errors import ErrorCode, PilotError
from pilot.fsutil import UntrustedFile, open_untrusted
from pilot.job import Job
from pilot.stageitems import Transferred


def checked_output(lfn: str, local: Path) -> tuple[int, tuple[int, int]]:
    """Size and identity of an output the payload made: a regular file of its own, not a symbolic link
    (to the pilot's proxy, say), not a hard link, not a FIFO or device. Anything else fails the output."""
    try:
        fd = open_untrusted(local)
    except FileNotFoundError:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} was not produced") from None
    except UntrustedFile as exc:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} {exc.strerror}: not shipped") from None
    except OSError as exc:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_nlink > 1:
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"output {lfn} is a hard link to another file: not shipped")
    return st.st_size, (st.st_dev, st.st_ino)


def output_report(job: Job, files: list[Transferred]) -> dict[str, dict[str, Any]]:
    """{lfn: {guid, fsize, adler32 | md5sum, surl}}, as the server's job_output_report wants it."""
    guids = {spec.lfn: spec.guid for spec in job.all_outputs}
    report = {}
    for item in files:
        entry: dict[str, Any] = {"guid": guids.get(item.lfn, ""), "fsize": item.fsize, "surl": item.location}
        if item.checksum is not None:
            entry["adler32" if item.checksum.kind == "adler32" else "md5sum"] = item.checksum.value
        report[item.lfn] = entry
    return report
