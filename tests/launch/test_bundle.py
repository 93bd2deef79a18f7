"""The one-file bundle, built by `python -m launch.build`, run by a python that has only the standard library."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from pilot import __version__
from pilot.errors import ExitCode
from tests.e2e.conftest import Site
from tests.launch.conftest import isolated_python


def test_version_inside_and_outside_the_bundle(bundle: Path) -> None:
    inside = subprocess.run([*isolated_python(), str(bundle), "--version"], capture_output=True, text=True)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.startswith(f"pandapilot {__version__} (bundle pandapilot, built ")
    outside = subprocess.run([sys.executable, "-m", "pilot", "--version"], capture_output=True, text=True)
    assert outside.stdout.strip() == f"pandapilot {__version__}"


def test_the_bundle_holds_pure_python_and_psutil_apart(bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
    compiled = [n for n in names if n.endswith(".so")]
    assert compiled and all(n.startswith("_native/psutil/") for n in compiled), compiled
    for package in ("pilot/cli.py", "sitemovers/local.py", "requests/__init__.py", "yaml/__init__.py",
                    "urllib3/__init__.py", "__main__.py"):
        assert package in names
    assert any(n.startswith("pandapilot-") and n.endswith(".dist-info/entry_points.txt") for n in names)


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PANDAPILOT_NATIVE_CACHE"] = str(cache)
    return env


def test_jobs_run_from_the_bundle_with_its_own_psutil(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    site = Site(tmp_path / "site")
    content = os.urandom(50_000)
    site.add_job(31, "cp in.dat out.dat", (site.put_input("in.dat", content),), ("out.dat",))
    site.add_job(32, "exit 4")
    cache = tmp_path / "cache"
    argv = [*isolated_python(), str(bundle), *site.argv()[3:]]  # the same `run ...` options, from the bundle
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(cache), cwd=tmp_path, timeout=120)
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert site.final(31)["job_status"] == "finished"
    assert (site.se / "out" / "scope" / "out.dat").read_bytes() == content
    assert site.final(32)["trans_exit_code"] == 4
    unpacked = list(cache.glob("native-*/psutil/__init__.py"))
    assert len(unpacked) == 1, "the bundled psutil was unpacked once, into the private cache"
    assert oct(cache.stat().st_mode & 0o777) == "0o700"


def test_the_nodes_psutil_is_preferred(bundle: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = subprocess.run([sys.executable, str(bundle), "--version"], capture_output=True, text=True,
                            env=_env(cache))
    assert result.returncode == 0, result.stderr
    assert not cache.exists(), "a node with psutil needs nothing unpacked"
