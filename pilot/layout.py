"""Every name of the work area: the job dirs under a pilot's work directory, and the pilot's own files in
a job's work directory (no input or output may take one of those).

    <job dir>/                 the pilot's: the payload cannot write here (in switched modes)
        journal.json           the durable record of the job
        pilot.log              the pilot's log of this job
        <log>.tgz              the log tarball while it is built
        payload.sh             the wrapper that starts the payload (switched modes)
        payload.sh.status      0600, empty: the wrapper writes "refused" into it when it finds itself
                               running as the pilot's account (which alone can write it)
        proxy/                 0700: the user's proxy as the pilot received it
        cred/                  0700, the payload account's: its copies of credentials
        work/                  the payload's part (owned by the payload's account in switched modes):
            inputs, outputs, payload.stdout, payload.stderr, jobReport.json, tmp/,
            release_setup.sh (the release setup wrapper), setup.log (its output)

Everything the pilot reads from `work/` may have been planted by the payload: it is opened without
following links and read with a bound (pilot.fsutil).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

JOURNAL = "journal.json"
JOURNAL_FILES = "journal.files.jsonl"  # the journal's file events, appended (pilot/journal.py)
JOB_DEFINITION = "jobdef.json"  # the job's raw definition, written once; the journal names it
PILOT_LOG = "pilot.log"
STDOUT = "payload.stdout"
STDERR = "payload.stderr"
JOB_REPORT = "jobReport.json"  # written by the payload, read by the pilot
TMP = "tmp"  # the payload's TMPDIR
INPUT_MANIFEST = "pilot_inputs.json"  # written by stage-in: each input's local path or TURL
POOL_FILE_CATALOG = "PoolFileCatalog.xml"  # written by stage-in when an input is read directly
FILESTAGER_LIST = "filestager.json"  # written by stage-in for the payload's file stager (queue `filestager`)
PAYLOAD_DIR = "work"  # the payload's part of the job's work dir
WRAPPER = "payload.sh"  # starts the payload under its account
WRAPPER_STATUS = "payload.sh.status"  # the wrapper's refusal, written only under the pilot's account
PROXY_DIR = "proxy"  # the user's proxy, the pilot's copy
CRED_DIR = "cred"  # the payload account's copies of credentials
RELEASE_WRAPPER = "release_setup.sh"  # in the payload's part: sources the release setup, then the payload
SETUP_LOG = "setup.log"  # in the payload's part: the release setup's output
RECOVERY_LOCK = "recovery.lock"  # held by the pilot recovering this job (O_EXCL)
# A journal that recovery set aside (unreadable, or out of attempts): never scanned again.
JOURNAL_ASIDE = (f"{JOURNAL}.corrupt", f"{JOURNAL}.exhausted")

RESERVED = frozenset({JOURNAL, JOURNAL_FILES, JOB_DEFINITION, PILOT_LOG, STDOUT, STDERR, TMP, INPUT_MANIFEST,
                      FILESTAGER_LIST, RECOVERY_LOCK, *JOURNAL_ASIDE, JOB_REPORT, PAYLOAD_DIR, WRAPPER, PROXY_DIR,
                      CRED_DIR, RELEASE_WRAPPER, SETUP_LOG, WRAPPER_STATUS})
# Files that change because the pilot works, not the payload: the looping check ignores them.
PILOT_OWN = frozenset({JOURNAL, JOURNAL_FILES, PILOT_LOG, RECOVERY_LOCK})

JOB_DIR_PREFIX = "PanDA_Pilot-"
_JOB_DIR = re.compile(r"PanDA_Pilot-(\d{1,19})-(\d{1,9})(?:-\d+)?\Z")


def is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith((f".{JOURNAL}.", f".{JOB_DEFINITION}."))  # their temporary files


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


@dataclass(frozen=True)
class JobDir:
    """The paths of one job's work directory: the pilot's part and the payload's part."""

    root: Path

    @property
    def payload(self) -> Path:
        return self.root / PAYLOAD_DIR

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL

    @property
    def pilot_log(self) -> Path:
        return self.root / PILOT_LOG

    @property
    def stdout(self) -> Path:
        return self.payload / STDOUT

    @property
    def stderr(self) -> Path:
        return self.payload / STDERR

    @property
    def job_report(self) -> Path:
        return self.payload / JOB_REPORT

    @property
    def setup_log(self) -> Path:
        return self.payload / SETUP_LOG

    @property
    def release_wrapper(self) -> Path:
        return self.payload / RELEASE_WRAPPER

    @property
    def tmp(self) -> Path:
        return self.payload / TMP

    @property
    def wrapper(self) -> Path:
        return self.root / WRAPPER

    @property
    def wrapper_status(self) -> Path:
        return self.root / WRAPPER_STATUS

    @property
    def proxy_dir(self) -> Path:
        return self.root / PROXY_DIR

    @property
    def cred_dir(self) -> Path:
        return self.root / CRED_DIR
