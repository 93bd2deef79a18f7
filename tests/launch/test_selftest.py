"""`pandapilot selftest`: the release tester's battery, run with real bundles built by launch/build.py (a candidate
and a "production" bundle of another version built from a copy of the source), the site movers against real
storage, and a job under another identity with real test accounts (root)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch.build import build
from pilot.sitebuilder import Site
from tests.accounts import account_name, passable_dir
from tests.launch.conftest import REPO, node_python
from tests.servers.common import free_port
from tests.servers.xrootd import XRootDServer

QUICK = "success,payload failure,looping kill,site movers,many small files,other identity"
PRODUCTION = "0.0.9"
ONE = account_name("a")  # made by the session fixture `accounts` (root)
DN_ONE = "/DC=org/DC=pandapilot-test/CN=Tenant One"


def selftest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pilot", "selftest", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def rows(out: str) -> dict[str, list[str]]:
    """The table's rows: test name -> [status, time, status, time ...]."""
    table = {}
    for line in out.splitlines():
        match = re.match(r"^([a-zA-Z][\w ]*?(?: \([\w-]+\))?)((?:  +(?:pass|FAIL|n/a) +\d+\.\ds)+)$", line)
        if match:
            table[match.group(1)] = match.group(2).split()
    return table


def release_source(root: Path, version: str, defect: tuple[str, str, str] = ()) -> Path:
    """A copy of the pilot's source as another release: its own version, and optionally one defect
    (file, text, replacement)."""
    source = root / f"pandapilot-{version}"
    for part in ("pilot", "sitemovers", "recovery", "launch"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    edits = [("pilot/__init__.py", '__version__ = "0.1.0"', f'__version__ = "{version}"'),
             ("pyproject.toml", 'version = "0.1.0"', f'version = "{version}"')] + ([defect] if defect else [])
    for name, text, replacement in edits:
        path = source / name
        assert text in path.read_text(), f"{name} has no {text!r}"
        path.write_text(path.read_text().replace(text, replacement))
    return source


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("production")
    return build(root / "production.pyz", source=release_source(root, PRODUCTION)).path


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release whose failed payloads are reported with the wrong error code."""
    root = tmp_path_factory.mktemp("broken")
    defect = ("pilot/errors.py", "PAYLOAD_FAILED = 1305", "PAYLOAD_FAILED = 1399")
    return build(root / "broken.pyz", source=release_source(root, "0.0.8", defect)).path


def test_two_releases_side_by_side_with_timings(bundle: Path, production: Path, tmp_path: Path) -> None:
    result = selftest("--bundle", str(bundle), "--compare", str(production), "--python", node_python(),
                      "--only", QUICK, "--dir", str(tmp_path / "battery"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert re.search(r"^pandapilot\.pyz: pandapilot 0\.1\.0 \(bundle pandapilot", result.stdout, re.M)
    assert re.search(rf"^production\.pyz \(compare\): pandapilot {PRODUCTION} \(bundle production", result.stdout,
                     re.M)
    table = rows(result.stdout)
    assert set(table) == {"success", "payload failure", "looping kill", "site movers (local)", "many small files",
                          "other identity"}
    for name, cells in table.items():
        expected = "n/a" if name == "other identity" else "pass"
        assert cells[0] == cells[2] == expected, (name, cells)
        if expected == "pass":
            assert float(cells[1][:-1]) > 0 and float(cells[3][:-1]) > 0, "each pilot's time"
    assert "other identity [pandapilot.pyz]: n/a: the queue does not switch identity" in result.stdout
    assert re.search(r"battery wall time: pandapilot\.pyz \d+\.\d s, production\.pyz \(compare\) \d+\.\d s",
                     result.stdout)
    # each pilot really ran its own jobs: the pilotID of every update names its version
    for column, version in (("p0", "0.1.0"), ("p1", PRODUCTION)):
        final = Site(tmp_path / "battery" / column / "success").final(1)
        assert final["job_status"] == "finished" and final["pilot_id"].endswith(f"|PR|{version}"), final


@pytest.mark.parametrize("order", ["candidate fails", "production fails"])
def test_a_failure_of_either_pilot_makes_the_exit_code(order: str, bundle: Path, broken: Path,
                                                       tmp_path: Path) -> None:
    first, second = (broken, bundle) if order == "candidate fails" else (bundle, broken)
    result = selftest("--bundle", str(first), "--compare", str(second), "--python", node_python(),
                      "--only", "payload failure", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    cells = rows(result.stdout)["payload failure"]
    assert (cells[0], cells[2]) == (("FAIL", "pass") if first == broken else ("pass", "FAIL"))
    assert "job 2 failed 1399: payload exited with code 3: broken (expected failed 1305)" in result.stdout


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


# --- the site movers ---------------------------------------------------------------------------------
def queue_file(tmp_path: Path, **settings: str) -> str:
    path = tmp_path / "queue.yaml"
    path.write_text("".join(f"{key}: {value!r}\n" for key, value in settings.items()))
    return str(path)


def test_mover_families_without_their_storage_are_not_available(tmp_path: Path) -> None:
    queue = queue_file(tmp_path, copytools="local,xrootd,rucio")
    result = selftest("--queue-config", queue, "--only", "site movers", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    table = rows(result.stdout)
    assert [table[f"site movers ({f})"][0] for f in ("local", "xrootd", "rucio")] == ["pass", "n/a", "n/a"]
    assert ("site movers (xrootd) [installed]: n/a: the xrootd mover needs a storage endpoint (se) of root://, "
            "xroot://; the queue has none") in result.stdout
    assert "site movers (rucio) [installed]: n/a: the rucio mover needs a storage endpoint (se) of rucio://" \
        in result.stdout


def test_a_configured_mover_whose_storage_is_unreachable_fails(tmp_path: Path) -> None:
    se = f"root://127.0.0.1:{free_port()}//data"  # nothing listens there
    result = selftest("--queue-config", queue_file(tmp_path, copytools="xrootd,local", se=se), "--only",
                      "site movers,success", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    table = rows(result.stdout)
    assert (table["success"][0], table["site movers (xrootd)"][0], table["site movers (local)"][0]) == \
        ("pass", "FAIL", "n/a")
    assert f"site movers (xrootd) [installed]: FAIL: the xrootd mover cannot put a file into the queue's storage " \
        f"{se}: " in result.stdout
    assert f"site movers (local) [installed]: n/a: the queue's storage {se} is not one the local mover speaks" \
        in result.stdout


def test_the_battery_stages_in_and_out_through_xrootd(xrootd_server: XRootDServer, tmp_path: Path) -> None:
    area = xrootd_server.data / "selftest"
    area.mkdir(exist_ok=True)
    xrootd_server.chown(area)
    se = xrootd_server.root_url(area)
    queue = queue_file(tmp_path, copytool="xrootd", se=se, seprodpath="prod")
    result = selftest("--queue-config", queue, "--only", "site movers", "--dir", str(tmp_path / "battery"),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert f"site movers (xrootd) [installed]: pass: stage-in and stage-out through xrootd, the queue's storage " \
        f"{se}" in result.stdout
    final = Site(tmp_path / "battery" / "p0" / "site-movers-xrootd").final(4)
    stored = final["job_output_report"]["back.dat"]
    assert re.fullmatch(rf"{re.escape(se)}/prod/selftest\.[0-9a-f]{{12}}/back\.dat", stored["surl"]), stored
    assert not [p for p in area.rglob("*") if p.is_file()], "the test's files are removed from the storage"


# --- a job under another identity (root: real test accounts) ----------------------------------------------
@pytest.fixture
def open_dir() -> Iterator[Path]:
    with passable_dir("pandapilot-selftest-") as root:
        yield root


def identity_queue(root: Path, account: str) -> str:
    mapfile = root / "grid-mapfile"
    mapfile.write_text(f'"{DN_ONE}" {account}\n')
    mapfile.chmod(0o644)
    return queue_file(root, identity="uid", grid_mapfile=str(mapfile))


def test_the_payload_runs_as_the_mapped_account(accounts, open_dir: Path) -> None:
    if not accounts:
        pytest.skip("switching identity needs root (test accounts, setpriv)")
    result = selftest("--queue-config", identity_queue(open_dir, ONE), "--only", "other identity", cwd=open_dir)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert rows(result.stdout)["other identity"][0] == "pass"
    assert f"other identity [installed]: pass: payload ran as {ONE} (uid {accounts[ONE].pw_uid}), the account " \
        f"{DN_ONE} maps to" in result.stdout


def test_a_broken_mapping_fails_with_its_reason(accounts, open_dir: Path) -> None:
    if not accounts:
        pytest.skip("switching identity needs root (test accounts, setpriv)")
    result = selftest("--queue-config", identity_queue(open_dir, "ptnosuchaccount"), "--only", "other identity",
                      cwd=open_dir)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert rows(result.stdout)["other identity"][0] == "FAIL"
    assert re.search(r"other identity \[installed\]: FAIL: job 7 failed \d+: account ptnosuchaccount does not exist "
                     r"on this node \(expected finished 0\)", result.stdout), result.stdout


def test_a_site_closed_to_the_payload_account_fails_with_its_reason(open_dir: Path) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    result = selftest("--queue-config", identity_queue(open_dir, ONE), "--only", "other identity", "--dir",
                      str(closed / "battery"), cwd=open_dir)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert f"other identity [installed]: FAIL: the payload's account cannot reach the test site: {closed} is closed " \
        "to other accounts (give --dir a directory they can pass through)" in result.stdout
