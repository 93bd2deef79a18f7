"""Storage left as a dead pilot left it: partial files removed, a shipped log recognised.

Before a recovered job's files go out again (only when the job's current attempt is this journal's, so
no other pilot writes these names):
- the temporary files of interrupted puts (`sitemovers.base.is_partial` names of this job's outputs and
  log, beside their destinations) are removed, where the mover can list its storage (a directory, XRootD,
  gfal2's protocols, a Rucio RSE through its protocol), and only names of that pattern;
- a log tarball that is in storage already, identical to the one in the work dir (the pilot died between
  the put and its journal record), is recorded as transferred: a rebuilt tarball would differ, and a
  destination is never overwritten. (An output found so is recognised by the stage-out itself.)
"""

from __future__ import annotations

import logging
import os
import threading

from pilot.errors import PilotError
from pilot.fsutil import open_untrusted
from pilot.job import FileSpec, Job
from pilot.jobrun import PilotContext
from pilot.journal import Journal
from pilot.staging import Stager
from sitemovers.base import Direction, Failure, RemoteFile, SiteMover, TransferError, same_file
from sitemovers.checksum import Hasher

log = logging.getLogger(__name__)


def tidy_storage(ctx: PilotContext, job: Job, journal: Journal) -> None:
    todo = [spec for spec in job.all_outputs if journal.file_info("out", spec.lfn) is None]
    if not todo:
        return
    stager = Stager(ctx.queue, ctx.registry, threading.Event())
    try:
        mover = stager.movers(Direction.OUT)[0]
    except (PilotError, IndexError) as exc:
        log.error("job %d: storage not checked: %s", job.panda_id, getattr(exc, "diag", exc))
        return
    path = ctx.queue.sepath if job.is_analysis else ctx.queue.seprodpath
    for spec in todo:
        try:
            url = stager.url(spec, path)
            remove_partials(mover, url, job.panda_id)
            if spec.lfn == job.log.lfn:
                _log_shipped(mover, job, journal, spec, url)
        except (PilotError, TransferError, OSError) as exc:
            log.warning("job %d: storage of %s not checked: %s", job.panda_id, spec.lfn, exc)


def remove_partials(mover: SiteMover, url: str, panda_id: int) -> list[str]:
    """Remove the partial files of `url`'s name beside it (the mover lists its storage: a directory,
    `xrdfs ls`, gfal2's listdir, an RSE through its protocol); where it cannot list, nothing."""
    try:
        removed = mover.remove_partials(url)
    except TransferError as exc:
        if exc.failure is not Failure.UNSUPPORTED:
            raise
        log.info("job %d: %s cannot list its storage: partial files of %s not looked for", panda_id,
                 mover.name, url)
        return []
    for partial in removed:
        log.info("job %d: removed the partial file %s", panda_id, partial)
    return removed


def _log_shipped(mover: SiteMover, job: Job, journal: Journal, spec: FileSpec, url: str) -> None:
    remote = mover.stat(url)
    if remote is None:
        return
    try:
        fd = open_untrusted(journal.path.parent / spec.lfn)
    except OSError:
        return  # no tarball (or not a regular file) here: the log is made again
    kind = remote.checksum.kind if remote.checksum is not None else "adler32"
    hasher = Hasher(md5=kind == "md5")
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    local = RemoteFile(size, hasher.result(kind))
    if same_file(local, remote):
        log.info("job %d: the log %s is in storage already: not sent again", job.panda_id, spec.lfn)
        journal.file_done("out", spec.lfn, fsize=size, checksum=str(local.checksum), location=url, guid=spec.guid)
