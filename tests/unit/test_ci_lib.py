"""The provisioning scripts' shared library (.ci/lib.sh), run for real by bash: root check, which Debian
packages are missing, and the venv that is kept when it passes its check and rebuilt when it does not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

LIB = Path(__file__).resolve().parents[2] / ".ci" / "lib.sh"


def bash(script: str, *args: str, env: Optional[dict[str, str]] = None,
         prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "bash", "-c", f'set -euo pipefail; source "{LIB}"; {script}', "bash", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged uid needs root")
def test_ci_init_refuses_a_non_root_user() -> None:
    done = bash("ci_init provision-x; echo reached", prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                                               "--clear-groups"))
    assert done.returncode == 1
    assert "[provision-x] must run as root" in done.stderr
    assert "reached" not in done.stdout


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system: no dpkg database to ask")
def test_apt_missing_lists_only_packages_not_installed() -> None:
    done = bash('apt_missing "$@"', "coreutils", "no-such-package-pandapilot", "bash")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["no-such-package-pandapilot"]


def test_require_commands_names_the_missing_program() -> None:
    done = bash('require_commands bash "$@"', "no-such-program-pandapilot", env={"CI_NAME": "provision-y"})
    assert done.returncode == 1
    assert "no-such-program-pandapilot missing after install" in done.stderr


def test_ensure_venv_builds_once_then_keeps_and_rebuilds_a_broken_one(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    script = """
        check() { [[ -f "$1/marker" && $(cat "$1/marker") == "$2" ]]; }
        install() { echo installed >> "$INSTALLS"; printf '%s' "$2" > "$1/marker"; }
        ensure_venv "$1" "$2" check install v1
    """
    env = {"INSTALLS": str(tmp_path / "installs"), "PANDA_CI_CACHE": str(tmp_path / "cache")}
    first = bash(script, str(venv), sys.executable, env=env)
    assert first.returncode == 0, first.stderr
    assert "ready" in first.stdout and (venv / "bin" / "python").exists()
    second = bash(script, str(venv), sys.executable, env=env)
    assert second.returncode == 0 and f"venv {venv} ok" in second.stdout
    assert (tmp_path / "installs").read_text().count("installed") == 1
    (venv / "marker").write_text("broken")
    third = bash(script, str(venv), sys.executable, env=env)
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "installs").read_text().count("installed") == 2
    assert (venv / "marker").read_text() == "v1"


def test_ensure_venv_fails_when_the_check_still_fails_after_install(tmp_path: Path) -> None:
    done = bash('check() { false; }; install() { true; }; ensure_venv "$1" "$2" check install; echo reached',
                str(tmp_path / "venv"), sys.executable)
    assert done.returncode == 1
    assert "failed its import check" in done.stderr
    assert "reached" not in done.stdout
