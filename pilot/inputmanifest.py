"""Direct access and the input manifest: which inputs the payload reads remotely, and what it is told.

`wants_direct` and `direct_allowed` decide (staging asks, not a mover); `write_manifest` writes
`INPUT_MANIFEST` (JSON) and, when an input is read directly, a PoolFileCatalog.xml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from pilot.config import QueueConfig
from pilot.fsutil import atomic_write
from pilot.job import FileSpec, Job
from pilot.layout import INPUT_MANIFEST, POOL_FILE_CATALOG
from pilot.stageitems import Transferred
from sitemovers.base import Outcome

NOT_DIRECT = (".tar.gz", ".lib.tgz", ".tgz", ".tar")  # archives are always copied (and `.raw.` files)


def wants_direct(job: Job, queue: QueueConfig) -> bool:
    """The queue allows direct access and the job asks for it (transferType=direct or an access mode)."""
    if not queue.allowdirectaccess:
        return False
    words = job.job_pars.split()
    asked = "--accessmode=direct" in words or any(a == "--accessmode" and b == "direct"
                                                  for a, b in zip(words, words[1:]))
    return job.transfer_type.lower() == "direct" or asked


def direct_allowed(spec: FileSpec) -> bool:
    """A file the job does not forbid direct access to (prodDBlockToken=local), and not an archive."""
    name = spec.lfn.lower()
    return not spec.direct_access_forbidden and not name.endswith(NOT_DIRECT) and ".raw." not in name


def write_manifest(workdir: Path, job: Job, done: list[Transferred]) -> None:
    """`INPUT_MANIFEST` (JSON: per input its lfn, guid, scope, size, checksum, outcome, and `path` or
    `turl`), and a PoolFileCatalog.xml when an input is read directly. Written atomically before the
    payload starts (so no name of the payload's can be in the way)."""
    specs = {spec.lfn: spec for spec in job.inputs}
    files = []
    for item in done:
        spec = specs.get(item.lfn)
        entry: dict[str, Any] = {"lfn": item.lfn, "guid": spec.guid if spec else "",
                                 "scope": spec.scope if spec else "", "fsize": item.fsize,
                                 "checksum": str(item.checksum or ""), "outcome": item.outcome.value}
        entry["turl" if item.outcome is Outcome.DIRECT else "path"] = item.location
        files.append(entry)
    atomic_write(workdir / INPUT_MANIFEST, (json.dumps({"version": 1, "files": files}, indent=1) + "\n").encode())
    if any(item.outcome is Outcome.DIRECT for item in done):
        atomic_write(workdir / POOL_FILE_CATALOG, pool_file_catalog(files).encode())


def pool_file_catalog(files: list[dict[str, Any]]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8" standalone="no" ?>',
             '<!DOCTYPE POOLFILECATALOG SYSTEM "InMemory">', "<POOLFILECATALOG>"]
    for entry in files:
        pfn = entry.get("turl") or entry.get("path") or ""
        lines += [f"  <File ID={quoteattr(entry['guid'])}>",
                  f"    <physical><pfn filetype=\"ROOT_All\" name={quoteattr(pfn)}/></physical>",
                  f"    <logical><lfn name={quoteattr(entry['lfn'])}/></logical>",
                  "  </File>"]
    lines.append("</POOLFILECATALOG>")
    return "\n".join(lines) + "\n"
