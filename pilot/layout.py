"""Every name of a job's work directory.

    <job dir>/                 the pilot's: the payload cannot write here (in switched modes)
        journal.json           the durable record of the job
        pilot.log              the pilot's log of this job
        <log>.tgz              the log tarball while it is built
        payload.sh             the wrapper that starts the payload (switched modes)
        proxy/                 0700: the user's proxy as the pilot received it
        cred/                  0700, the payload account's: its copy of the user's proxy
        work/                  the payload's part (owned by the payload's account in switched modes):
            inputs, outputs, payload.stdout, payload.stderr, jobReport.json, tmp/

No input or output may take one of these names. Everything the pilot reads from `work/` may have been
planted by the payload: it is opened without following links and read with a bound (pilot.fsutil).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JOURNAL = "journal.json"
PILOT_LOG = "pilot.log"
STDOUT = "payload.stdout"
STDERR = "payload.stderr"
JOB_REPORT = "jobReport.json"  # written by the payload, read by the pilot
TMP = "tmp"  # the payload's TMPDIR
PAYLOAD_DIR = "work"  # the payload's part of the job's work dir
WRAPPER = "payload.sh"
PROXY_DIR = "proxy"
CRED_DIR = "cred"

RESERVED = frozenset({JOURNAL, PILOT_LOG, STDOUT, STDERR, TMP, JOB_REPORT, PAYLOAD_DIR, WRAPPER, PROXY_DIR,
                      CRED_DIR})
# Files that change because the pilot works, not the payload: the looping check ignores them.
PILOT_OWN = frozenset({JOURNAL, PILOT_LOG})


def is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith(f".{JOURNAL}.")  # the journal's temporary files


@dataclass(frozen=True)
class JobDir:
    """The paths of one job's work directory."""

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
    def tmp(self) -> Path:
        return self.payload / TMP

    @property
    def wrapper(self) -> Path:
        return self.root / WRAPPER

    @property
    def proxy_dir(self) -> Path:
        return self.root / PROXY_DIR

    @property
    def cred_dir(self) -> Path:
        return self.root / CRED_DIR
