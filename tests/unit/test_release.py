"""Production jobs in their release: a fake release tree, the release check, the setup wrapper."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.local import LocalDispatcher
from pilot.errors import ErrorCode, PilotError
from pilot.job import parse_job
from pilot.jobrun import JobResult, JobRun, PilotContext
from pilot.node import NodeInfo
from pilot.release import find_release, installed
from sitemovers.registry import Registry

PLATFORM = "x86_64-el9-gcc13-opt"
TRF = """#!/bin/sh
{ echo "mark=$RELEASE_MARK release=$PANDA_SWRELEASE platform=$PANDA_CMTCONFIG home=$PANDA_HOMEPACKAGE"
  echo "cores=$ATHENA_PROC_NUMBER,$ATHENA_CORE_NUMBER,$OMP_NUM_THREADS,$PANDA_CORE_COUNT"
  for word in "$@"; do echo "arg=$word"; done; } > out.dat
"""


def make_release(root: Path, name: str, setup: str, platform: str = PLATFORM) -> Path:
    where = root / platform / name
    (where / "bin").mkdir(parents=True)
    (where / "setup.sh").write_text(setup)
    trf = where / "bin" / "Reco_tf.py"
    trf.write_text(TRF)
    trf.chmod(0o755)
    return where


@pytest.fixture
def appdir(tmp_path: Path) -> Path:
    """Two releases, each with a setup script exporting a variable and putting its Reco_tf.py on PATH."""
    root = tmp_path / "sw"
    for name, mark in (("21.0.15", "one"), ("22.0.1", "two")):
        where = root / PLATFORM / name
        make_release(root, name, f'export RELEASE_MARK={mark}\nexport PATH="{where}/bin:$PATH"\n'
                                 f'echo "set up {name} for $1 on $2 ($3)"\n')
    return root


class Site:
    def __init__(self, tmp_path: Path, **queue: Any) -> None:
        self.se = tmp_path / "se"
        self.se.mkdir(exist_ok=True)
        self.dispatcher = LocalDispatcher(tmp_path / "jobs")
        self.work = tmp_path / "work"
        self.ctx = PilotContext(
            config=PilotConfig(queue="Q", dispatcher=str(tmp_path / "jobs"), workdir=self.work,
                               keep_workdirs=True),
            queue=QueueConfig(name="Q", se=str(self.se), kill_grace=2, **queue),
            node=NodeInfo(host="node01", cores=2, memory_mb=4000, disk_free_mb=10_000, cpu_mhz=0),
            dispatcher=self.dispatcher, registry=Registry(), control=Control(),
        )

    def run(self, **fields: str) -> JobResult:
        raw = {"PandaID": "11", "attemptNr": "1", "transformation": "Reco_tf.py", "jobPars": "",
               "outFiles": "out.dat,11.log.tgz", "logFile": "11.log.tgz", "swRelease": "Atlas-21.0.15",
               "homepackage": "AtlasProduction/21.0.15.1", "cmtConfig": PLATFORM, **fields}
        job = parse_job(raw)
        return JobRun(job, self.ctx, self.work / f"job{job.panda_id}").run()

    def final(self, panda_id: int = 11) -> dict[str, Any]:
        return self.dispatcher.history(panda_id)[-1]

    def output(self) -> str:
        return (self.se / "out.dat").read_text()


def test_a_production_job_runs_its_transformation_inside_its_release(tmp_path, appdir, caplog):
    caplog.set_level(logging.INFO)
    site = Site(tmp_path, appdir=str(appdir))
    hostile = "--in 'a b' '$(touch pwned)' ';' '`id`' \"x'y\""
    result = site.run(jobPars=hostile)
    assert result.state == "finished", result.diag
    lines = site.output().splitlines()
    assert lines[0] == f"mark=one release=Atlas-21.0.15 platform={PLATFORM} home=AtlasProduction/21.0.15.1"
    assert [line[4:] for line in lines if line.startswith("arg=")] == ["--in", "a b", "$(touch pwned)", ";",
                                                                        "`id`", "x'y"]
    assert not list(tmp_path.rglob("pwned")), "the job's words never pass through a shell"
    setup_log = (site.work / "job11" / "work" / "setup.log").read_text()
    assert f"set up 21.0.15 for Atlas-21.0.15 on {PLATFORM} (AtlasProduction/21.0.15.1)" in setup_log
    assert "set up 21.0.15" in (site.work / "job11" / "pilot.log").read_text(), "setup output in the log"


def test_the_other_release_gets_its_own_environment(tmp_path, appdir):
    site = Site(tmp_path, appdir=str(appdir))
    assert site.run(swRelease="22.0.1").state == "finished"
    assert site.output().startswith("mark=two release=22.0.1")


def test_a_release_not_installed_fails_early_without_any_transfer(tmp_path, appdir):
    site = Site(tmp_path, appdir=f"{appdir},{tmp_path / 'nowhere'}")
    (site.se / "in.dat").write_bytes(b"input")
    result = site.run(swRelease="Atlas-99.9.9", inFiles="in.dat", fsize="5")
    assert (result.state, result.error_code) == ("failed", ErrorCode.MISSING_INSTALLATION)
    assert "99.9.9" in result.diag and PLATFORM in result.diag and str(appdir) in result.diag
    assert result.bytes_in == 0 and not (site.work / "job11" / "work" / "in.dat").exists()
    assert [h["job_status"] for h in site.dispatcher.history(11)] == ["starting", "failed"]


def test_a_platform_not_installed_is_a_missing_installation(tmp_path, appdir):
    site = Site(tmp_path, appdir=str(appdir))
    result = site.run(cmtConfig="aarch64-el9-gcc13-opt")
    assert result.error_code == ErrorCode.MISSING_INSTALLATION and "aarch64-el9-gcc13-opt" in result.diag


def test_no_software_directory_at_all_is_its_own_code(tmp_path):
    site = Site(tmp_path, appdir=str(tmp_path / "missing"))
    assert site.run().error_code == ErrorCode.NO_SOFTWARE_DIR


def test_a_hostile_release_name_never_becomes_a_path(tmp_path, appdir):
    site = Site(tmp_path, appdir=str(appdir))
    result = site.run(swRelease="../../etc")
    assert result.error_code == ErrorCode.BAD_FILE_NAME


@pytest.mark.parametrize("setup, how", [
    ("echo 'compiler not found: gcc13'\nfalse\n", "exit code 1"),
    ("echo 'compiler not found: gcc13'\nexit 7\n", "ended the wrapper with code 7"),
])
def test_a_failing_setup_is_reported_with_its_output_tail(tmp_path, setup, how):
    root = tmp_path / "sw"
    make_release(root, "21.0.15", setup)
    site = Site(tmp_path, appdir=str(root))
    result = site.run()
    assert (result.state, result.error_code) == ("failed", ErrorCode.SETUP_FAILURE)
    assert how in result.diag and "compiler not found: gcc13" in result.diag
    assert not (site.work / "job11" / "work" / "out.dat").exists(), "the payload never ran"


def test_a_failing_payload_after_a_good_setup_is_a_payload_failure(tmp_path, appdir):
    site = Site(tmp_path, appdir=str(appdir))
    result = site.run(transformation="/bin/sh", jobPars="-c 'exit 3'")
    assert (result.error_code, result.exit_code) == (ErrorCode.PAYLOAD_FAILED, 3)


def test_a_job_without_a_release_runs_bare(tmp_path, appdir):
    site = Site(tmp_path, appdir=str(appdir))
    result = site.run(swRelease="NULL", transformation="/bin/sh", jobPars="-c 'echo bare > out.dat'")
    assert result.state == "finished" and site.output() == "bare\n"
    assert not (site.work / "job11" / "work" / "release_setup.sh").exists()


def test_an_absolute_envsetup_is_shared_by_all_releases(tmp_path, appdir):
    shared = tmp_path / "site-setup.sh"
    shared.write_text('export RELEASE_MARK="site:$(basename "$PANDA_RELEASE_DIR")"\n'
                      'export PATH="$PANDA_RELEASE_DIR/bin:$PATH"\n')
    site = Site(tmp_path, appdir=str(appdir), envsetup=str(shared))
    assert site.run(swRelease="22.0.1").state == "finished"
    assert site.output().startswith("mark=site:22.0.1 ")


def test_multi_core_variables_from_the_job_or_the_queue(tmp_path, appdir):
    site = Site(tmp_path, appdir=str(appdir), corecount=4)
    assert site.run(coreCount="8").state == "finished"
    assert "cores=8,8,8,8" in site.output() and site.final()["core_count"] == 8
    (site.se / "out.dat").unlink()  # the next job's output of the same name
    assert site.run(PandaID="12", outFiles="out.dat,12.log.tgz", logFile="12.log.tgz").state == "finished"
    assert "cores=4,4,4,4" in site.output() and site.final(12)["core_count"] == 4


def test_release_lookup_and_listing(appdir):
    queue = QueueConfig(appdir=str(appdir))
    assert [(r.name, r.platform) for r in installed(queue)] == [("21.0.15", PLATFORM), ("22.0.1", PLATFORM)]
    job = parse_job({"PandaID": "1", "transformation": "t", "swRelease": "21.0.15", "cmtConfig": "NULL"})
    found = find_release(job, queue)
    assert found is not None and found.path == str(appdir / PLATFORM / "21.0.15")
    with pytest.raises(PilotError):
        find_release(parse_job({"PandaID": "1", "transformation": "t", "swRelease": "20.1"}), queue)


def test_pandapilot_releases_table_and_json(appdir):
    base = [sys.executable, "-m", "pilot", "releases", "--appdir", str(appdir)]
    table = subprocess.run(base, capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split() == ["RELEASE", "PLATFORM", "PATH"]
    assert table[1].split() == ["21.0.15", PLATFORM, str(appdir / PLATFORM / "21.0.15")]
    listed = json.loads(subprocess.run([*base, "--json"], capture_output=True, text=True, check=True).stdout)
    assert [(r["name"], r["platform"]) for r in listed] == [("21.0.15", PLATFORM), ("22.0.1", PLATFORM)]
    missing = subprocess.run([sys.executable, "-m", "pilot", "releases"], capture_output=True, text=True)
    assert missing.returncode == 65 and "appdir" in missing.stderr


def test_the_input_policy_is_checked_before_staging(tmp_path, appdir):
    """Over the cap: 1168 and no transfer; the override lets the same job through."""
    site = Site(tmp_path, appdir=str(appdir), maxinputsize=1)
    (site.se / "in.dat").write_bytes(b"x" * (2 * 2**20))
    fields = {"inFiles": "in.dat", "fsize": str(2 * 2**20), "taskID": "4711"}
    result = site.run(**fields)
    assert result.error_code == ErrorCode.SIZE_TOO_LARGE and result.bytes_in == 0
    site.ctx.queue.maxinputsize_overrides = [{"taskID": 4711}]
    result = site.run(PandaID="12", outFiles="out.dat,12.log.tgz", logFile="12.log.tgz", **fields)
    assert result.state == "finished" and result.bytes_in == 2 * 2**20
