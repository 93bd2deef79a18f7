"""The names of the pilot's own files in a job's work directory (no input or output may take one)."""

JOURNAL = "journal.json"
JOURNAL_FILES = "journal.files.jsonl"  # the journal's file events, appended (pilot/journal.py)
PILOT_LOG = "pilot.log"
STDOUT = "payload.stdout"
STDERR = "payload.stderr"
JOB_REPORT = "jobReport.json"  # written by the payload, read by the pilot
TMP = "tmp"  # the payload's TMPDIR
INPUT_MANIFEST = "pilot_inputs.json"  # written by stage-in: each input's local path or TURL
POOL_FILE_CATALOG = "PoolFileCatalog.xml"  # written by stage-in when an input is read directly

RESERVED = frozenset({JOURNAL, JOURNAL_FILES, PILOT_LOG, STDOUT, STDERR, TMP, INPUT_MANIFEST})
# Files that change because the pilot works, not the payload: the looping check ignores them.
PILOT_OWN = frozenset({JOURNAL, JOURNAL_FILES, PILOT_LOG})


def is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith(f".{JOURNAL}.")  # the journal's temporary files
