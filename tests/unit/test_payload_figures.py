"""What the server hears about the payload: its own memory and CPU time, per job, and the extra fields."""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.local import LocalDispatcher
from pilot.job import parse_job
from pilot.jobrun import JobResult, JobRun, PilotContext
from pilot.node import NodeInfo, cpu_model
from pilot.proctrack import PR_SET_CHILD_SUBREAPER, new_tracker
from sitemovers.registry import Registry

MB_KB = 1024
BURN = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.6: pass"


class Site:
    def __init__(self, tmp_path: Path, **queue: Any) -> None:
        (tmp_path / "se").mkdir(exist_ok=True)
        self.tmp = tmp_path
        self.dispatcher = LocalDispatcher(tmp_path / "jobs")
        self.ctx = PilotContext(
            config=PilotConfig(queue="Q", dispatcher=str(tmp_path / "jobs"), workdir=tmp_path / "work"),
            queue=QueueConfig(name="Q", se=str(tmp_path / "se"), kill_grace=2, **queue),
            node=NodeInfo(host="node01", cores=2, memory_mb=4000, disk_free_mb=10_000, cpu_mhz=0,
                          cpu_model="Test CPU @ 2.40GHz"),
            dispatcher=self.dispatcher, registry=Registry(), control=Control(),
        )
        self.next_id = 20

    def job(self, argv: str, **fields: str) -> JobRun:
        self.next_id += 1
        pid = self.next_id
        raw = {"PandaID": str(pid), "transformation": sys.executable, "jobPars": argv,
               "outFiles": f"{pid}.log.tgz", "logFile": f"{pid}.log.tgz", **fields}
        return JobRun(parse_job(raw), self.ctx, self.tmp / "work" / str(pid))

    def final(self, run: JobRun) -> dict[str, Any]:
        return self.dispatcher.history(run.job.panda_id)[-1]


def run_until_sampled(run: JobRun, flag: Path, at_least_kb: int) -> JobResult:
    """Run the job in a thread; once the pilot has measured the payload (`at_least_kb` of RSS), let the
    payload end by creating `flag`."""
    results: list[JobResult] = []
    thread = threading.Thread(target=lambda: results.append(run.run()))
    thread.start()
    deadline = time.monotonic() + 120
    while (run.monitor is None or run.monitor.max_rss_kb < at_least_kb) and time.monotonic() < deadline:
        time.sleep(0.05)
    flag.touch()
    thread.join(120)
    assert results, "the job did not end"
    return results[0]


def test_a_big_payload_then_a_small_one_each_reports_its_own_memory(tmp_path):
    site = Site(tmp_path)
    flag = tmp_path / "go"
    big = site.job(f"-c 'import os, time; b = b\"x\" * (200 * 2**20)\n"
                   f"while not os.path.exists(\"{flag}\"): time.sleep(0.05)'")
    assert run_until_sampled(big, flag, 190 * MB_KB).state == "finished"
    first = site.final(big)
    assert 190 * MB_KB <= first["max_rss"] <= 320 * MB_KB
    assert first["max_pss"] >= 190 * MB_KB and first["max_vmem"] >= first["max_rss"]
    flag.unlink()
    small = site.job(f"-c 'import os, time\nwhile not os.path.exists(\"{flag}\"): time.sleep(0.05)'")
    assert run_until_sampled(small, flag, 1).state == "finished"
    second = site.final(small)
    pilot_kb = psutil.Process().memory_info().rss // 1024
    assert 0 < second["max_rss"] < 60 * MB_KB, "the small payload's size, not the big one's"
    assert second["max_rss"] < pilot_kb, "nor the pilot's own"


@pytest.fixture
def subreaper():
    """This process adopts orphans, as the pilot does (pandapilot run makes itself a subreaper)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("this kernel has no child subreaper")
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.mark.parametrize("tracking", ["cgroup", "subreaper"])
def test_cpu_time_of_a_multi_process_payload_is_summed(tmp_path, subreaper, monkeypatch, tracking):
    """Three processes burn 0.6 s of CPU each: one child waited for, one orphan the pilot adopts, and
    the main one. Every second of it counts, and only for this job: from the payload cgroup's cpu.stat,
    or without a cgroup from what the pilot reaps (wait4)."""
    if tracking == "subreaper":
        monkeypatch.setattr("pilot.jobrun.new_tracker", lambda label: new_tracker(label, use_cgroup=False))
    else:
        probe = new_tracker("probe")
        probe.close()
        if probe.kind != "cgroup":
            pytest.skip("no writable cgroup v2 here: the payload is tracked as the pilot's subreaper")
    site = Site(tmp_path)
    burn = tmp_path / "burn.py"
    burn.write_text(BURN)
    done = tmp_path / "orphan.done"
    main = tmp_path / "main.py"
    main.write_text(f"""import os, subprocess, sys, time
py, burn = sys.executable, {str(burn)!r}
child = subprocess.Popen([py, burn])
if os.fork() == 0:  # an orphan: its parent exits at once, the pilot (a subreaper) adopts it
    os.setsid()
    if os.fork() == 0:
        subprocess.run([py, burn])
        open({str(done)!r}, "w").close()
    os._exit(0)
exec(open(burn).read())
child.wait()
while not os.path.exists({str(done)!r}):
    time.sleep(0.05)
""")
    run = site.job(str(main))
    result = run.run()
    assert result.state == "finished", result.diag
    assert run.payload is not None and run.payload.tracker.kind == tracking
    final = site.final(run)
    assert final["cpu_consumption_time"] >= 2  # 3 x 0.6 s and the interpreters' start
    assert final["cpu_consumption_unit"] == "s+Test CPU @ 2.40GHz"
    assert isinstance(final["mean_core_count"], int) and final["mean_core_count"] >= 1
    trivial = site.job("-c pass")
    trivial.run()
    assert site.final(trivial)["cpu_consumption_time"] <= 1, "the previous job's CPU time is not carried over"


def test_updates_from_running_on_carry_cores_and_start_time(tmp_path):
    site = Site(tmp_path, corecount=4)
    run = site.job("-c pass")
    assert run.run().state == "finished"
    history = site.dispatcher.history(run.job.panda_id)
    assert [h["job_status"] for h in history] == ["starting", "running", "finished"]
    assert "core_count" not in history[0] and "start_time" not in history[0]
    assert history[1]["core_count"] == 4 and history[1]["start_time"] == history[2]["start_time"]
    assert history[2]["core_count"] == 4


def test_the_job_report_gives_exe_error_code_and_diag(tmp_path):
    site = Site(tmp_path)
    script = ("-c 'import json, os\njson.dump({\"exitCode\": 65, \"exitMsg\": \"no events\\nleft\"}, "
              "open(os.environ[\"PILOT_JOB_REPORT\"], \"w\"))\nraise SystemExit(65)'")
    run = site.job(script)
    assert run.run().state == "failed"
    final = site.final(run)
    assert (final["exe_error_code"], final["exe_error_diag"]) == (65, "no events left")
    assert final["pilot_error_diag"].startswith("payload exited with code 65")
    assert json.loads(final["meta_data"])["exitCode"] == 65


def test_output_storage_urls_carry_their_scheme(tmp_path):
    site = Site(tmp_path)
    run = site.job("-c 'open(\"out.dat\", \"w\").write(\"x\")'", outFiles="out.dat,21.log.tgz")
    assert run.run().state == "finished"
    report = site.final(run)["job_output_report"]
    assert report["out.dat"]["surl"] == f"file://{tmp_path}/se/out.dat"
    assert report["21.log.tgz"]["surl"].startswith("file:///")


@pytest.mark.parametrize("text, model", [
    ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2630 v3 @ 2.40GHz\n",
     "Intel(R) Xeon(R) CPU E5-2630 v3 @ 2.40GHz"),
    ("processor : 0\n", ""),
])
def test_cpu_model_from_cpuinfo(tmp_path, text, model):
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_model(str(tmp_path / "cpuinfo")) == model
