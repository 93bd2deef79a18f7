"""The names of the pilot's own files in a job's work directory (no input or output may take one)."""

JOURNAL = "journal.json"
JOB_DEFINITION = "jobdef.json"  # the job's raw definition, written once; the journal names it
PILOT_LOG = "pilot.log"
STDOUT = "payload.stdout"
STDERR = "payload.stderr"
JOB_REPORT = "jobReport.json"  # written by the payload, read by the pilot
TMP = "tmp"  # the payload's TMPDIR

RESERVED = frozenset({JOURNAL, JOB_DEFINITION, PILOT_LOG, STDOUT, STDERR, TMP})
# Files that change because the pilot works, not the payload: the looping check ignores them.
PILOT_OWN = frozenset({JOURNAL, PILOT_LOG})


def is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith((f".{JOURNAL}.", f".{JOB_DEFINITION}."))  # their temporary files
