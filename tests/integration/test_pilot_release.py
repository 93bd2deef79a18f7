"""A production job in its release, against the real panda-server on loopback, in both dialects.

The job's release fields are stored the way the server's own submission stores them (atlasrelease,
homepackage, cmtconfig); the server hands them out as swRelease, homepackage and cmtConfig, and keeps
what the pilot reports (cores, CPU time and unit, memory).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from pilot.errors import ErrorCode, ExitCode
from tests.integration.pandaserver import PandaServer
from tests.integration.test_pilot_panda import SCOPE, PilotSite

PLATFORM = "x86_64-el9-gcc13-opt"
TRF = """#!/bin/sh
out=$1; shift
{ echo "release=$PANDA_SWRELEASE platform=$PANDA_CMTCONFIG home=$PANDA_HOMEPACKAGE mark=$RELEASE_MARK"
  echo "cores=$ATHENA_PROC_NUMBER"
  for word in "$@"; do echo "arg=$word"; done; } > "$out"
"""


def release_site(tmp_path: Path, server: PandaServer) -> PilotSite:
    site = PilotSite(tmp_path, server)
    release = tmp_path / "sw" / PLATFORM / "21.0.15"
    (release / "bin").mkdir(parents=True)
    (release / "setup.sh").write_text(f'export RELEASE_MARK=in-release\nexport PATH="{release}/bin:$PATH"\n')
    (release / "bin" / "Reco_tf.py").write_text(TRF)
    (release / "bin" / "Reco_tf.py").chmod(0o755)
    with open(site.queue, "a") as queue:
        queue.write(f"appdir: {tmp_path / 'sw'}\n")
    return site


def test_a_production_job_runs_in_its_release(panda_server: PandaServer, tmp_path: Path) -> None:
    site = release_site(tmp_path, panda_server)
    out = f"out-{uuid.uuid4().hex[:12]}.dat"
    panda_id = panda_server.insert_job(
        outputs=[out], transformation="Reco_tf.py", job_pars=f"{out} --in 'a b' '$(id)'", core_count=2,
        sw_release="Atlas-21.0.15", home_package="AtlasProduction/21.0.15.1", cmt_config=PLATFORM)
    missing = panda_server.insert_job(transformation="Reco_tf.py", job_pars="x", sw_release="Atlas-99.0.0",
                                      cmt_config=PLATFORM, priority=500)
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    panda_server.run_adder()
    state = panda_server.job_state(panda_id)
    assert (state["table"], state["jobstatus"]) == ("jobsarchived4", "finished"), state
    assert (state["atlasrelease"], state["cmtconfig"]) == ("Atlas-21.0.15", PLATFORM)
    assert state["actualcorecount"] == 2
    assert str(state["cpuconsumptionunit"]).startswith("s")
    lines = (site.se / "prod" / SCOPE / out).read_text().splitlines()
    assert lines == [f"release=Atlas-21.0.15 platform={PLATFORM} home=AtlasProduction/21.0.15.1 mark=in-release",
                     "cores=2", "arg=--in", "arg=a b", "arg=$(id)"]

    failed = panda_server.job_state(missing)
    assert failed["piloterrorcode"] == ErrorCode.MISSING_INSTALLATION
    assert "99.0.0" in failed["piloterrordiag"]
