"""Fixtures for integration tests against a real panda-server on loopback.

``panda_server`` (session scope) is parametrized over both protocol dialects:
``v1`` = panda-server 1.0.4 (``/api/v1/...``), ``legacy`` = panda-server 0.8.1 (``/server/panda/...``).
It yields a :class:`tests.integration.pandaserver.PandaServer`; the venvs come from
``.ci/provision-panda-server.sh`` (the only reason for a skip is that they are missing).
Each version gets its own PostgreSQL cluster and work dir; at the end of its tests the front and
the database are stopped by PID and the work dir is removed. Set PANDA_CI_KEEP_FAILED=1 to keep
the work dir of a server that failed to start.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.integration.pandaserver import PandaServer, launch_panda_server, venv_dir, venv_ready  # noqa: E402

PANDA_VERSIONS = ["1.0.4", "0.8.1"]
PANDA_IDS = ["v1", "legacy"]


@pytest.fixture(scope="session", params=PANDA_VERSIONS, ids=PANDA_IDS)
def panda_server(request: pytest.FixtureRequest) -> Iterator[PandaServer]:
    version: str = request.param
    if not venv_ready(version):
        pytest.skip(
            f"panda-server {version} venv not found at {venv_dir(version)}: "
            "run .ci/provision-panda-server.sh (as root) first"
        )
    server = launch_panda_server(version)
    try:
        yield server
    finally:
        server.shutdown()
