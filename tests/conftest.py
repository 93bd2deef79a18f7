"""Session-wide fixtures shared by several test directories: the pilot's bundle, built once by the real
build command, and a single-node Slurm on loopback, started once and stopped by PID."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.slurm import SlurmCluster, missing_programs

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from launch.build import build

    return build(tmp_path_factory.mktemp("bundle") / "pandapilot.pyz").path


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
