"""The fuzzer: a few hundred hostile job definitions (fixed seed) through one pilot run. For each: the
pilot survived, the definition was rejected with a reason or reported with a code and a one-line
diagnostic, nothing was written outside the site's directories, and the next job ran."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from pilot.errors import ErrorCode, ExitCode
from tests.e2e.conftest import Site
from tests.fuzz.definitions import INPUT, definitions, outcome, write

SEED = 20261128
COUNT = 250
MALFORMED = {ErrorCode.BAD_FILE_NAME, ErrorCode.CONVERSION_FAILURE, ErrorCode.NOT_DEFINED, ErrorCode.NOT_SAME_LENGTH,
             ErrorCode.UNKNOWN_CHECKSUM_TYPE}
RAN_AND_FAILED = {ErrorCode.PAYLOAD_FAILED, ErrorCode.MISSING_OUTPUT}  # a definition that ran, to its failure


def outside(tmp_path: Path) -> set[str]:
    """Everything beside this test's directory (the other tests' temporary directories)."""
    return {str(p) for p in tmp_path.parent.rglob("*") if tmp_path not in (p, *p.parents)}


@pytest.mark.timeout(900)  # about a minute alone; a loaded machine may take a few
def test_hostile_definitions_never_stop_the_pilot(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    site = Site(tmp_path / "site", {"kill_grace": 1})
    site.put_input("in.dat", INPUT)
    fuzzed = definitions(SEED, COUNT)
    for one in fuzzed:
        write(site.jobs, one)
        site.add_job(one.panda_id + 1, "true")  # the next job, which must run whatever came before
    outside_before = outside(tmp_path)

    result = site.run("--max-no-job", "3", timeout=600)

    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    outcomes = {one.panda_id: outcome(site.jobs, one.panda_id, site.history(one.panda_id)) for one in fuzzed}
    for one in fuzzed:
        got = outcomes[one.panda_id]
        what = f"{one.mutation} ({one.panda_id}): {got}"
        assert got.kind in ("finished", "failed", "rejected", "rejected (no PandaID)"), what
        if got.kind == "failed":
            assert got.code in MALFORMED | RAN_AND_FAILED, what
            assert got.diag and "\n" not in got.diag and "Traceback" not in got.diag, what
        if got.kind == "rejected":
            assert got.diag and "\n" not in got.diag, what
        assert site.final(one.panda_id + 1)["job_status"] == "finished", f"the job after {what} did not run"
    unidentified = [p for p in (site.jobs / "rejected").glob("unidentified-*.json.reason")]
    assert len(unidentified) == sum(o.kind == "rejected (no PandaID)" for o in outcomes.values())
    # nothing outside the site's directories; in storage only what the valid jobs put there
    assert os.listdir(tmp_path) == ["site"] and outside(tmp_path) == outside_before
    assert set(os.listdir(tmp_path / "site")) <= {"jobs", "queue.yaml", "se", "work"}
    stored = {p.name for p in (site.se / "out" / "scope").iterdir()}
    assert all(name.endswith(".log.tgz") or name in ("out.dat", "ünïcode ø.dat") for name in stored), stored
    assert not site.work.exists() or os.listdir(site.work) == []  # job dirs cleaned, the reserve given back
    table = collections.Counter((one.mutation, outcomes[one.panda_id].label) for one in fuzzed)
    assert table[("valid", "finished")] >= 1 and table[("NUL in jobPars", "failed 1302")] >= 1
