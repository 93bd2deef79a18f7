"""The rucio mover from the one-file bundle: its client helper (sitemovers/rucio_call.py) has no path
inside the archive, so the mover hands its source to the client's python with `-c`. A job run by the
bundle downloads its input by DID and uploads its output and log through the real Rucio server."""

from __future__ import annotations

import os
import secrets
import subprocess
import zlib
from pathlib import Path

import pytest

from pilot.errors import ExitCode
from sitemovers.base import Expected, MoverSettings
from sitemovers.rucio import RucioSiteMover
from tests.e2e.conftest import Site
from tests.launch.conftest import isolated_python
from tests.servers.rucio import SCOPE, RucioServer

pytestmark = pytest.mark.integration


def test_a_job_moves_its_files_through_rucio_from_the_bundle(bundle: Path, rucio_server: RucioServer,
                                                              tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    data = os.urandom(40_000)
    setup = str(rucio_server.setup_script())
    registering = RucioSiteMover(MoverSettings(setup=setup, options={"rucio_register": True}))
    source = tmp_path / f"bin.{tag}.dat"
    source.write_bytes(data)
    registering.put(source, f"rucio://LOCAL_DISK/{SCOPE}/{source.name}", Expected())  # the job's input

    site = Site(tmp_path / "site", {"se": "rucio://LOCAL_DISK", "seprodpath": "", "copytool": "rucio",
                                    "copysetup": setup, "stagein_retries": 1, "stageout_retries": 1})
    one = {"lfn": source.name, "fsize": str(len(data)), "checksum": f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}",
           "scope": SCOPE}
    out = f"bout.{tag}.dat"
    site.add_job(41, f"cp {source.name} {out}", (one,), (out,), scope=SCOPE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PANDAPILOT_NATIVE_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run([*isolated_python(), str(bundle), *site.argv()[3:]], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    final = site.final(41)
    assert final["job_status"] == "finished", final
    reader = RucioSiteMover(MoverSettings(setup=setup))
    stored = reader.stat(f"rucio://LOCAL_DISK/{SCOPE}/{out}")
    assert stored is not None and stored.fsize == len(data)
    assert reader.stat(f"rucio://LOCAL_DISK/{SCOPE}/41.log.tgz") is not None
