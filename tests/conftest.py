"""Session-wide fixtures: real storage servers on loopback, each started once per test session on first
use and stopped by its PID at the end (tests/servers/). A test that needs one is skipped, saying why, only
when the server's software is not installed (.ci/provision-storage.sh installs it)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.servers import rucio, xrootd


@pytest.fixture(scope="session")
def xrootd_server() -> Iterator[xrootd.XRootDServer]:
    missing = xrootd.available()
    if missing:
        pytest.skip(missing)
    server = xrootd.launch()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def rucio_server(xrootd_server: xrootd.XRootDServer) -> Iterator[rucio.RucioServer]:
    missing = rucio.available()
    if missing:
        pytest.skip(missing)
    server = rucio.launch(xrootd_server)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
