"""The wrapper and a site for each test (the bundle fixture is in tests/conftest.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Site

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "launch" / "pilot-wrapper.sh"


def isolated_python() -> list[str]:
    """The node's python without its site-packages: only the standard library and the bundle's contents."""
    return [sys.executable, "-S"]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def node_python() -> str:
    """The node's own python3 (what a wrapper finds on a worker node), else this one."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable
