"""The bundle, built once per test session by the real build command, and the wrapper beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Site

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "launch" / "pilot-wrapper.sh"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from launch.build import build

    return build(tmp_path_factory.mktemp("bundle") / "pandapilot.pyz").path


def isolated_python() -> list[str]:
    """The node's python without its site-packages: only the standard library and the bundle's contents."""
    return [sys.executable, "-S"]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)
