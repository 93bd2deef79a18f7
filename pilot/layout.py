"""Every name of the work area: the job dirs under a pilot's work directory, and the pilot's own files in
a job's work directory (no input or output may take one of those)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

JOURNAL = "journal.json"
JOURNAL_FILES = "journal.files.jsonl"  # the journal's file events, appended (pilot/journal.py)
PILOT_LOG = "pilot.log"
STDOUT = "payload.stdout"
STDERR = "payload.stderr"
JOB_REPORT = "jobReport.json"  # written by the payload, read by the pilot
TMP = "tmp"  # the payload's TMPDIR
INPUT_MANIFEST = "pilot_inputs.json"  # written by stage-in: each input's local path or TURL
POOL_FILE_CATALOG = "PoolFileCatalog.xml"  # written by stage-in when an input is read directly
RECOVERY_LOCK = "recovery.lock"  # held by the pilot recovering this job (O_EXCL)
# A journal that recovery set aside (unreadable, or out of attempts): never scanned again.
JOURNAL_ASIDE = (f"{JOURNAL}.corrupt", f"{JOURNAL}.exhausted")

RESERVED = frozenset({JOURNAL, JOURNAL_FILES, PILOT_LOG, STDOUT, STDERR, TMP, INPUT_MANIFEST, RECOVERY_LOCK,
                      *JOURNAL_ASIDE})
# Files that change because the pilot works, not the payload: the looping check ignores them.
PILOT_OWN = frozenset({JOURNAL, JOURNAL_FILES, PILOT_LOG, RECOVERY_LOCK})

JOB_DIR_PREFIX = "PanDA_Pilot-"
_JOB_DIR = re.compile(r"PanDA_Pilot-(\d{1,19})-(\d{1,9})(?:-\d+)?\Z")


def is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith(f".{JOURNAL}.")  # the journal's temporary files


def job_dir_name(panda_id: int, attempt_nr: int) -> str:
    return f"{JOB_DIR_PREFIX}{int(panda_id)}-{int(attempt_nr)}"


def new_job_dir(workdir: Path, panda_id: int, attempt_nr: int) -> Path:
    """A job's work dir under the pilot's work directory; a leftover of the same name gets a suffix."""
    path = Path(workdir) / job_dir_name(panda_id, attempt_nr)
    if path.exists():
        path = path.with_name(f"{path.name}-{time.time_ns()}")
    return path


def parse_job_dir(name: str) -> Optional[tuple[int, int]]:
    """(PandaID, attemptNr) of a job dir's name, None for anything else."""
    match = _JOB_DIR.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None
