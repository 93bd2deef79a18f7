"""Test harness: a real panda-server (PyPI, both protocol dialects) with PostgreSQL on loopback.

Use through the ``panda_server`` pytest fixture (tests/integration/conftest.py), or directly::

    from tests.integration.pandaserver import launch_panda_server
    server = launch_panda_server("1.0.4")   # or "0.8.1" (legacy dialect)
    ...
    server.shutdown()

The venvs come from ``.ci/provision-panda-server.sh``.
"""

from .server import VERSIONS, PandaServer, cache_root, launch_panda_server, venv_dir, venv_ready

__all__ = ["VERSIONS", "PandaServer", "cache_root", "launch_panda_server", "venv_dir", "venv_ready"]
