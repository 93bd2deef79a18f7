"""Storage left as a dead pilot left it: partial files removed, finished puts recognised.

Before a recovered job's outputs go out again: a temporary (partial) file of an interrupted put is
removed, and an output that is already in storage with the size and checksum of the local file (the
pilot died between the put and its journal record) is recorded as transferred instead of being sent a
second time. Only names of this job's own outputs are looked at.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Optional

from pilot.errors import PilotError
from pilot.fsutil import open_untrusted
from pilot.job import FileSpec, Job
from pilot.jobrun import PilotContext
from pilot.journal import Journal
from pilot.layout import JobDir
from pilot.staging import Stager
from sitemovers.base import Direction, SiteMover, TransferError, is_partial
from sitemovers.checksum import Checksum, Hasher, file_checksum
from sitemovers.local import LocalSiteMover, local_path

log = logging.getLogger(__name__)


def tidy_storage(ctx: PilotContext, job: Job, journal: Journal) -> None:
    """For every output (and the log) the journal does not show transferred: remove its partial file,
    and record it as transferred when storage already holds it intact."""
    todo = [spec for spec in job.all_outputs if journal.file_info("out", spec.lfn) is None]
    if not todo:
        return
    stager = Stager(ctx.queue, ctx.registry, threading.Event())
    try:
        mover = stager.movers(Direction.OUT)[0]
    except PilotError as exc:
        log.error("job %d: storage not checked: %s", job.panda_id, exc.diag)
        return
    path = ctx.queue.sepath if job.is_analysis else ctx.queue.seprodpath
    for spec in todo:
        try:
            url = stager.url(spec, path)
            for partial in partial_files(mover, url):
                log.info("job %d: removing the partial file %s", job.panda_id, partial)
                remove(mover, partial)
            _known_intact(mover, job, journal, spec, url)
        except (PilotError, TransferError, OSError) as exc:
            log.warning("job %d: storage of %s not checked: %s", job.panda_id, spec.lfn, exc)


def _known_intact(mover: SiteMover, job: Job, journal: Journal, spec: FileSpec, url: str) -> None:
    """The local output is in the payload's part of the work dir: read without following links."""
    local = JobDir(journal.path.parent).payload / spec.lfn
    if spec.lfn == job.log.lfn:
        local = journal.path.parent / spec.lfn  # the log tarball is the pilot's
    try:
        fd = open_untrusted(local)
    except OSError:
        return  # absent, a link, not a regular file
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        remote = stat_file(mover, url)
        if remote is None or remote[0] != size:
            return
        hasher = Hasher()
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    mine = hasher.result("adler32")
    if remote[1] != mine:
        return
    log.info("job %d: %s is in storage already (size %d, %s): not sent again", job.panda_id, spec.lfn, size, mine)
    journal.file_done("out", spec.lfn, fsize=size, checksum=str(mine), location=url, guid=spec.guid)


# --- storage operations the movers do not offer (yet): the local mover's, else nothing -------------------
def _local(mover: SiteMover, url: str) -> Optional[Path]:
    return local_path(mover.rewrite(url)) if isinstance(mover, LocalSiteMover) else None


def stat_file(mover: SiteMover, url: str) -> Optional[tuple[int, Checksum]]:
    path = _local(mover, url)
    if path is None:
        return None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_size, file_checksum(path)


def partial_files(mover: SiteMover, url: str) -> list[str]:
    path = _local(mover, url)
    if path is None:
        return []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    # the one temporary-name pattern of every put (sitemovers.base.partial_name)
    return [str(path.parent / name) for name in names if is_partial(name) and name.startswith(f".{path.name}.")]


def remove(mover: SiteMover, url: str) -> None:
    path = _local(mover, url)
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
