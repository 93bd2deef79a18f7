"""The contract suite's mover x test table: which case runs for which family, and why a case is absent.

Every test of tests/movers/test_contract.py belongs to a case (`CASES`, by test name). A case that cannot be
provoked for a family is not generated for it at all (tests/movers/conftest.py `pytest_generate_tests`
reads `EXCLUDED`): no skip is emitted, the reason lives here, next to the table it makes.

    python -m tests.movers.matrix          # the table (markdown), with the reasons as footnotes
"""

from __future__ import annotations

import sys

# test function -> its case (a case may have a get and a put test)
CASES = {
    "test_get": "get",
    "test_get_missing_source": "missing source",
    "test_get_size_mismatch_truncated_source": "size mismatch",
    "test_get_checksum_mismatch_corrupted_source": "checksum mismatch",
    "test_get_hostile_name": "hostile name",
    "test_get_cancelled": "cancel",
    "test_get_timeout_kills_the_tool": "timeout",
    "test_failing_setup_script": "failing setup",
    "test_put": "put",
    "test_put_size_mismatch": "size mismatch",
    "test_put_checksum_mismatch": "checksum mismatch",
    "test_put_hostile_name": "hostile name",
    "test_put_cancelled": "cancel",
    "test_put_timeout_kills_the_tool": "timeout",
    "test_put_never_overwrites_a_different_file": "different file there",
    "test_put_already_done_through_staging": "same file there",
    "test_put_permission_denied": "permission denied",
    "test_put_storage_out_of_space": "out of space",
    "test_remove_partials_touches_only_ours": "partials removed",
    "test_bulk_staging_keeps_per_file_outcomes": "many files, per-file outcomes",
}

FAMILY_NAMES = ("local", "lsm", "castor", "rfcp", "xrootd", "gfal-root", "gfal-davs", "gfal-file", "rucio")

_IN_PROCESS = "runs in the pilot's process: there is no command to hang (its transfers end by their own timeout)"
_NO_SETUP = "sources no setup script"
_QUESTION = ("a '?' cannot travel in a root:// URL (it starts XRootD's opaque part): such a name is refused in "
             "one line (UNSUPPORTED); the other hostile names: tests/storage/test_real_movers.py")
_NO_LISTING = "its protocol has no directory listing"

# family -> {case: why it cannot be provoked for that family}
EXCLUDED: dict[str, dict[str, str]] = {
    "local": {"timeout": _IN_PROCESS + " (a FIFO source is refused instead)", "failing setup": _NO_SETUP},
    "lsm": {"partials removed": _NO_LISTING + " (lsm-get, lsm-put, lsm-rm only)"},
    "castor": {"partials removed": "the CASTOR stand-in's nsls stats single entries only (CASTOR exists nowhere "
                                   "to list against)"},
    "rfcp": {"partials removed": "the CASTOR stand-in's nsls stats single entries only (CASTOR exists nowhere "
                                 "to list against)"},
    "xrootd": {"hostile name": _QUESTION},
    "gfal-root": {"timeout": _IN_PROCESS, "failing setup": "gfal2 is loaded in-process: " + _NO_SETUP,
                  "hostile name": _QUESTION},
    "gfal-davs": {"timeout": _IN_PROCESS, "failing setup": "gfal2 is loaded in-process: " + _NO_SETUP,
                  "permission denied": "XrdHttp reports a read-only file system as HTTP 500, like any server "
                                       "error (it fails as FAILED, nothing left: tests/storage)",
                  "out of space": "XrdHttp drops the connection when its file system is full (FAILED, nothing "
                                  "left)",
                  "hostile name": "'?' cannot travel in XRootD's http URLs (refused in one line; the other "
                                  "hostile names: tests/storage/test_real_movers.py)"},
    "gfal-file": {"timeout": _IN_PROCESS, "failing setup": "gfal2 is loaded in-process: " + _NO_SETUP,
                  "out of space": "gfal2's file plugin does not report ENOSPC: a full disk ends as a checksum "
                                  "mismatch, with nothing left"},
    "rucio": {"hostile name": "Rucio's DID names are letters, digits, '.', '-', '_': any other name is refused "
                              "in one line before a transfer (tests/storage/test_rucio_and_traces.py)",
              "partials removed": "an RSE places each DID by its own algorithm, not beside a path the test "
                                  "chooses: tests/storage/test_recovery_partials.py puts them beside the DID's "
                                  "PFN and removes them through the RSE's protocol"},
}


def case_of(test_name: str) -> str:
    return CASES.get(test_name, test_name)


def families_for(test_name: str, families: list[str]) -> list[str]:
    case = case_of(test_name)
    return [name for name in families if case not in EXCLUDED.get(name, {})]


def table() -> str:
    """The markdown table: one row per test, one column per family; an absent case points to its reason."""
    notes: dict[str, int] = {}
    lines = ["| test | case | " + " | ".join(FAMILY_NAMES) + " |", "|---|---|" + "---|" * len(FAMILY_NAMES)]
    for test, case in CASES.items():
        cells = []
        for family in FAMILY_NAMES:
            reason = EXCLUDED.get(family, {}).get(case)
            if reason is None:
                cells.append("yes")
            else:
                number = notes.setdefault(reason, len(notes) + 1)
                cells.append(f"no ({number})")
        lines.append(f"| {test.removeprefix('test_')} | {case} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"({number}) {reason}" for reason, number in notes.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
