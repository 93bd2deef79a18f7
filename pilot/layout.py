"""The names of the pilot's own files in a job's work directory (no input or output may take one)."""

JOURNAL = "journal.json"
PILOT_LOG = "pilot.log"
STDOUT = "payload.stdout"
STDERR = "payload.stderr"
JOB_REPORT = "jobReport.json"  # written by the payload, read by the pilot
TMP = "tmp"  # the payload's TMPDIR
WRAPPER = "pilot_wrapper.sh"  # the release setup wrapper the payload runs through
SETUP_LOG = "setup.log"  # the release setup's output

RESERVED = frozenset({JOURNAL, PILOT_LOG, STDOUT, STDERR, TMP, WRAPPER, SETUP_LOG})
# Files that change because the pilot works, not the payload: the looping check ignores them.
PILOT_OWN = frozenset({JOURNAL, PILOT_LOG})


def is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith(f".{JOURNAL}.")  # the journal's temporary files
