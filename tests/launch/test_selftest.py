"""`pandapilot selftest`: the release tester's battery, run with the real bundle, compared with a second one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.launch.conftest import node_python

QUICK = "success,payload failure,looping kill,site movers,many small files,other identity"


def selftest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pilot", "selftest", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def rows(out: str) -> dict[str, list[str]]:
    table = {}
    for line in out.splitlines():
        for name in QUICK.split(",") + ["large file", "recovery after SIGKILL"]:
            if line.startswith(name + " ") and "[" not in line:
                table[name] = line[len(name):].split()
    return table


def test_the_battery_passes_with_the_bundle_and_its_comparison(bundle: Path, tmp_path: Path) -> None:
    production = shutil.copy(bundle, tmp_path / "production.pyz")
    result = selftest("--bundle", str(bundle), "--compare", str(production), "--python", node_python(),
                      "--only", QUICK, "--dir", str(tmp_path / "battery"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    table = rows(result.stdout)
    assert set(table) == set(QUICK.split(","))
    for name, cells in table.items():
        expected = "n/a" if name == "other identity" else "pass"
        assert cells[0] == cells[2] == expected, (name, cells)
        assert cells[1].endswith("s") and cells[3].endswith("s"), "each pilot's time"
    assert "other identity [pandapilot.pyz]: n/a: the queue does not switch identity" in result.stdout
    assert "battery wall time: pandapilot.pyz " in result.stdout


def test_a_failing_test_makes_the_exit_code(tmp_path: Path) -> None:
    queue = tmp_path / "queue.yaml"
    queue.write_text("setup: 'exit 7'\n")  # the release setup breaks every payload
    result = selftest("--queue-config", str(queue), "--only", "success,payload failure", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    table = rows(result.stdout)
    assert table["success"][0] == "FAIL"
    assert "success [installed]: FAIL: job 1 failed " in result.stdout


def test_an_unknown_test_name_is_a_usage_error(tmp_path: Path) -> None:
    result = selftest("--only", "nonsense", cwd=tmp_path)
    assert result.returncode == 2
    assert "no test named nonsense" in result.stderr
