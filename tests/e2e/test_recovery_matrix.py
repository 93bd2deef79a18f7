"""The SIGKILL matrix with the embedded dispatcher (see tests/recovery_matrix.py), and recovery as a whole
through the command line: two recovering pilots at once, a payload that survives its pilot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import QUEUE, Site
from tests.recovery_matrix import (
    POINT_IDS,
    POINTS,
    SIZE,
    Cell,
    Point,
    check_no_survivor,
    check_storage,
    expected_outputs,
    final_requests,
    payload_script,
)


@pytest.mark.parametrize("point", POINTS, ids=POINT_IDS)
def test_sigkill_matrix_embedded(point: Point, tmp_path: Path) -> None:
    site = Site(tmp_path, {"copytool": "gated", "copytoolin": "gated"})
    data = os.urandom(SIZE)
    spec = site.put_input("in.dat", data)
    cell = Cell(point, tmp_path, [], dict(os.environ), "out1.dat", "out2.dat", "1.log.tgz")
    site.add_job(1, payload_script("in.dat", "out1.dat", "out2.dat", cell.pids, point.gate == "payload"),
                 inputs=(spec,), outputs=("out1.dat", "out2.dat"))
    cell.argv = site.argv()[4:]  # after 'python -m pilot run'
    logs, pids = cell.run()

    finals = [h for h in site.history(1) if h["job_status"] in ("finished", "failed")]
    ended = [(f["job_status"], f.get("pilot_error_code", 0)) for f in finals]
    assert ended == [(point.state, point.code)], logs[-3000:]
    assert len(final_requests(cell)) == 1
    outputs = expected_outputs(point, data, "out1.dat", "out2.dat")
    stored = site.se / "out" / "scope"
    log_data = (stored / "1.log.tgz").read_bytes()
    check_storage(site.se / "out", {**outputs, "1.log.tgz": log_data})
    report = finals[0]["job_output_report"]
    assert set(report) == {*outputs, "1.log.tgz"}
    for lfn, entry in report.items():
        assert entry["fsize"] == (stored / lfn).stat().st_size
    check_no_survivor(pids, logs)
    assert not list(site.work.glob("PanDA_Pilot-*")), "the work dir is removed after the report"


def test_two_recovering_pilots_at_once_recover_each_job_once(site: Site) -> None:
    from pilot.journal import Journal
    from pilot.layout import JOURNAL, job_dir_name

    for n in range(1, 9):  # jobs whose pilot died owing the final report
        workdir = site.work / job_dir_name(n, 1)
        workdir.mkdir(parents=True)
        job = site.add_job(n)
        (site.jobs / f"{n}.json").unlink()
        journal = Journal.create(workdir, n, 1, QUEUE, "node", job, owner={"pid": 1, "start_time": 1.0,
                                                                          "boot_id": "another-boot"})
        journal.owe_final({"state": "finished", "pilot_error_code": 0})
        journal.reach("staged_out")
        assert (workdir / JOURNAL).exists()
    argv = [sys.executable, "-m", "pilot", "recover", *site.argv()[4:]]
    pilots = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=site.root)
              for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in pilots]
    assert [p.returncode for p in pilots] == [0, 0], outputs
    for n in range(1, 9):
        assert [h["job_status"] for h in site.history(n)] == ["finished"], (n, outputs)
    assert not list(site.work.glob("PanDA_Pilot-*"))
