"""Session-wide fixtures shared by several test directories: the pilot's bundle, built once by the real
build command; a single-node Slurm on loopback; real storage servers on loopback (tests/servers/: XRootD
and Rucio). Each server is started once per test session on first use and stopped by PID; a test that
needs one is skipped, saying why, only when its software is not installed (.ci/provision-*.sh)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.accounts import made_accounts
from tests.integration.slurm import SlurmCluster, missing_programs
from tests.servers import rucio, xrootd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from launch.build import build

    return build(tmp_path_factory.mktemp("bundle") / "pandapilot.pyz").path


@pytest.fixture(scope="session")
def accounts() -> Iterator[dict[str, Any]]:
    """Two test accounts, `account_name("a")` and `("b")` (tests/accounts.py), made once per session as root
    and removed at its end; none otherwise."""
    if os.geteuid() != 0:
        yield {}
        return
    with made_accounts("a", "b") as made:
        yield made


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:

    if os.geteuid() != 0:
        pytest.skip("a single-node Slurm needs root (slurmd runs the batch jobs): run the tests as root")
    missing = missing_programs()
    if missing:
        pytest.skip(f"Slurm/munge programs missing ({', '.join(missing)}): run .ci/provision-slurm.sh as root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


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


def pytest_collection_modifyitems(items: list) -> None:
    """Tests that load gfal2 (XRootD's client) into this process run last: a process forked from one
    holding the client's threads may hang before its exec, so no other test forks after them."""
    items.sort(key=lambda item: "gfal" in item.nodeid)
