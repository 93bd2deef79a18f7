"""The payload's process tree: found from the cgroup v2 hierarchy where the node allows it (as root on the
test machines), else from the pilot's children as a subreaper; either way nothing of it survives."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pilot.config import QueueConfig
from pilot.errors import ErrorCode
from pilot.monitor import Limits, Monitor
from pilot.payload import Payload
from pilot.proctrack import (
    CGROUP_PREFIX,
    CgroupTracker,
    SubreaperTracker,
    cgroup2_mount,
    cgroup_parent,
    end_cgroup,
    new_tracker,
    own_cgroup,
)
from recovery.leftovers import end_payload

HYBRID = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 33 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
42 33 0:39 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
"""
ESCAPED = "51 30 0:40 / /srv/cgroup\\040v2 rw,relatime - cgroup2 none rw\n"


def test_the_cgroup2_mount_is_found_in_mountinfo_not_assumed(tmp_path):
    (tmp_path / "hybrid").write_text(HYBRID)
    (tmp_path / "escaped").write_text(ESCAPED)
    (tmp_path / "v1only").write_text(HYBRID.replace("cgroup2 cgroup2", "cgroup cgroup"))
    assert cgroup2_mount(str(tmp_path / "hybrid")) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_mount(str(tmp_path / "escaped")) == Path("/srv/cgroup v2")
    assert cgroup2_mount(str(tmp_path / "v1only")) is None
    (tmp_path / "cgroup").write_text("4:memory:/a/b\n0::/user.slice/pilot.scope\n")
    assert own_cgroup(str(tmp_path / "cgroup")) == "/user.slice/pilot.scope"


def test_recovery_only_ends_cgroups_named_like_the_pilots(tmp_path):
    assert end_cgroup(tmp_path / "someone-elses") is False
    mount = cgroup2_mount()
    if mount is not None:
        assert end_cgroup(mount / "system.slice") is False


needs_cgroup = pytest.mark.skipif(os.geteuid() != 0 or cgroup_parent() is None,
                                  reason="needs a writable cgroup v2 hierarchy (root on the test machines)")

# Each process starts a copy of itself in a new session and exits at once: it never stays put.
HOPPER = 'setsid sh -c "$HOP" & exit 0'
# Every process starts two more until the depth is reached, then sleeps: 2^6 - 1 shells, as many sleeps.
BOMB = 'b() { if [ "$1" -gt 0 ]; then b $(($1 - 1)) & b $(($1 - 1)) & fi; sleep 300; }; b 5'


def _marked(marker: str) -> list[int]:
    """Live processes carrying `marker` in their environment (whatever they became)."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("TRACK_MARKER") == marker:
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def _run_and_end(tmp_path: Path, script: str, until: int) -> tuple[Payload, str]:
    marker = uuid.uuid4().hex
    tracker = new_tracker("test")
    assert isinstance(tracker, CgroupTracker)
    env = {"PATH": os.environ["PATH"], "HOP": HOPPER, "TRACK_MARKER": marker}
    payload = Payload(["sh", "-c", script], tmp_path, env, tracker)
    payload.start(threading.Event())
    deadline = time.monotonic() + 30
    while len(tracker.pids()) < until and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(tracker.pids()) >= until or payload.exited.is_set()
    payload.kill(grace=0.2) if not payload.exited.is_set() else payload.reap()
    for name in ("payload.stdout", "payload.stderr"):
        os.unlink(tmp_path / name)
    return payload, marker


@needs_cgroup
def test_a_hopper_that_setsids_at_every_hop_leaves_nothing_20_of_20(tmp_path):
    for _ in range(20):
        payload, marker = _run_and_end(tmp_path, HOPPER, until=1)
        assert not _marked(marker), "a hopper process outlived its payload"
        assert not payload.tracker.path.exists(), "the payload's cgroup is removed"


@needs_cgroup
def test_a_bounded_fork_bomb_leaves_nothing_20_of_20(tmp_path):
    for _ in range(20):
        payload, marker = _run_and_end(tmp_path, BOMB, until=40)
        assert not _marked(marker), "a fork bomb process outlived its payload"
        assert not payload.tracker.path.exists()


@needs_cgroup
def test_the_cgroup_counts_processes_of_another_session_and_recovery_can_end_it(tmp_path):
    tracker = new_tracker("recovered")
    payload = Payload(["sh", "-c", "setsid sleep 300 & sleep 300"], tmp_path, {"PATH": os.environ["PATH"]},
                      tracker)
    payload.start(threading.Event())
    leader_session = os.getsid(payload.proc.pid)

    def other_session() -> list[int]:
        found = []
        for pid in tracker.pids():
            try:
                if os.getsid(pid) != leader_session and psutil.Process(pid).name() == "sleep":
                    found.append(pid)
            except (OSError, psutil.Error):
                pass
        return found

    deadline = time.monotonic() + 30
    while not other_session() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other_session(), "the cgroup holds the process that left the payload's session"
    # a later pilot, with only the journal's record, ends what is left (recovery goes through end_cgroup)
    assert tracker.path.name.startswith(CGROUP_PREFIX)
    assert end_payload({"cgroup": str(tracker.path)}) == []
    assert not tracker.path.exists() and not other_session()
    payload.exited.wait(10)
    payload.proc.wait(10)


SUBREAPER = textwrap.dedent("""
    import os, sys, threading, time
    from pathlib import Path
    from pilot.payload import Payload
    from pilot.proctrack import SubreaperTracker, become_subreaper
    assert become_subreaper()
    tracker = SubreaperTracker()
    payload = Payload(["sh", "-c", "(setsid sleep 300 &); setsid sh -c 'sleep 300' & sleep 300"],
                      Path(sys.argv[1]), {"PATH": os.environ["PATH"]}, tracker)
    payload.start(threading.Event())
    while len(tracker.pids()) < 4:
        time.sleep(0.01)
    seen = sorted(tracker.pids())
    payload.kill(grace=0.5)
    print(" ".join(map(str, seen)))
""")


def test_without_a_cgroup_the_subreaper_tracking_ends_double_forked_processes(tmp_path):
    done = subprocess.run([sys.executable, "-c", SUBREAPER, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) >= 4
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive


def test_the_fallback_is_taken_and_said_when_no_cgroup_can_be_had(monkeypatch, caplog):
    monkeypatch.setattr("pilot.proctrack.cgroup_parent", lambda: None)
    with caplog.at_level("INFO", logger="pilot.proctrack"):
        tracker = new_tracker("x")
    assert isinstance(tracker, SubreaperTracker) and "child-subreaper" in caplog.text


@needs_cgroup
def test_empty_payload_cgroups_of_gone_pilots_are_removed_busy_ones_kept(tmp_path):
    parent = cgroup_parent()
    gone = _a_dead_pid()
    empty = parent / f"{CGROUP_PREFIX}{gone}-1-9-1"
    empty.mkdir()
    busy_tracker = CgroupTracker.create(parent, f"{CGROUP_PREFIX}{gone}-2-9-1")
    busy = Payload(["sleep", "300"], tmp_path, {"PATH": os.environ["PATH"]}, busy_tracker)
    busy.start(threading.Event())
    try:
        mine = new_tracker("sweep")
        assert not empty.exists(), "an empty cgroup of a pilot that is gone is removed"
        assert busy_tracker.path.exists() and busy_tracker.pids(), "one with processes is left to recovery"
        mine.close()
    finally:
        busy.kill(grace=0)
    assert not busy_tracker.path.exists()


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- memory from the cgroup's counters, or from the processes ---------------------------------------
def _monitor(payload: Payload, tmp_path: Path, memory_mb: float = 0) -> Monitor:
    limits = Limits(looping=3600, memory_mb=memory_mb, workdir_mb=0, min_free_mb=0, stdout_mb=0, deadline=None)
    return Monitor(payload, tmp_path, limits, QueueConfig(memory_first_check=0))


def test_with_a_memory_controller_the_memory_is_the_cgroups_counters(tmp_path):
    """Not the real controller: this machine's cgroup v2 hierarchy (a hybrid layout, mounted at
    /sys/fs/cgroup/unified) has no memory controller, and cannot have one, as memory is bound to the v1
    hierarchy at /sys/fs/cgroup/memory (writing `+memory` to the v2 root's cgroup.subtree_control fails with
    ENOENT). So the counters are files in a directory laid out like a cgroup with the controller enabled:
    `memory.current` (now) and `memory.peak` (the highest so far), which the monitor takes over the sum of
    the processes (none here: `cgroup.procs` is empty)."""
    cgroup = tmp_path / "pandapilot-1-1-7-1"
    cgroup.mkdir()
    for name, text in (("cgroup.procs", ""), ("cgroup.kill", ""), ("memory.current", "734003200\n"),
                       ("memory.peak", "943718400\n")):
        (cgroup / name).write_text(text)
    tracker = CgroupTracker(path=cgroup)
    assert tracker.memory_bytes() == 700 * 2**20 and tracker.memory_peak_bytes() == 900 * 2**20
    payload = Payload(["true"], tmp_path, {}, tracker)
    under = _monitor(payload, tmp_path, memory_mb=800)
    assert under._memory(0) is None
    assert under.max_pss_kb == 700 * 1024 and under.max_rss_kb == 900 * 1024, "the peak between two samples"
    over = _monitor(payload, tmp_path, memory_mb=600)
    verdict = over._memory(0)
    assert verdict is not None and verdict.code == ErrorCode.OUT_OF_MEMORY
    (cgroup / "memory.current").write_text("not a number\n")
    assert tracker.memory_bytes() is None


@needs_cgroup
def test_without_a_memory_controller_the_memory_comes_from_the_processes(tmp_path):
    """The real cgroup of this machine: no memory controller, so no `memory.current`; the monitor sums the
    payload's processes (here one that holds 80 MB)."""
    tracker = new_tracker("memory")
    assert isinstance(tracker, CgroupTracker)
    hold = "import sys, time; x = bytearray(80 * 2**20); print('ready', flush=True); time.sleep(300)"
    payload = Payload([sys.executable, "-c", hold], tmp_path, {"PATH": os.environ["PATH"]}, tracker)
    payload.start(threading.Event())
    try:
        deadline = time.monotonic() + 60
        while "ready" not in (tmp_path / "payload.stdout").read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tracker.memory_bytes() is None and tracker.memory_peak_bytes() is None
        monitor = _monitor(payload, tmp_path, memory_mb=40)
        verdict = monitor._memory(0)
        assert monitor.max_rss_kb >= 80 * 1024 and verdict is not None and verdict.code == ErrorCode.OUT_OF_MEMORY
    finally:
        payload.kill(grace=0)


# A pilot (a subreaper, without a cgroup) ends a payload 20 times; its own child from before stays.
SUBREAPER_RUNS = textwrap.dedent("""
    import os, subprocess, sys, threading, time
    from pathlib import Path
    from pilot.payload import Payload
    from pilot.subreaper import SubreaperTracker, become_subreaper
    assert become_subreaper()
    bystander = subprocess.Popen(["sleep", "300"])  # the pilot's own, not the payload's
    for n in range(20):
        tracker = SubreaperTracker()
        payload = Payload(["sh", "-c", sys.argv[2]], Path(sys.argv[1]), dict(os.environ), tracker)
        payload.start(threading.Event())
        deadline = time.monotonic() + 60
        while len(tracker.pids()) < int(sys.argv[3]) and time.monotonic() < deadline:
            time.sleep(0.01)
        payload.kill(grace=0) if not payload.exited.is_set() else payload.reap()
        for name in ("payload.stdout", "payload.stderr"):
            os.unlink(Path(sys.argv[1]) / name)
        assert not tracker.pids(), tracker.pids()
    print(bystander.poll())
    bystander.kill()
""")


def test_without_a_cgroup_a_fork_bomb_is_stopped_then_killed_20_of_20_and_nothing_else_is(tmp_path):
    """The fallback's end of a tree: stopped walk after walk until nothing of it runs, then killed. (A
    hopper that forks, setsids and exits at every hop outruns the walks of /proc: the cgroup is the answer
    to that one.)"""
    marker = uuid.uuid4().hex
    env = {**os.environ, "TRACK_MARKER": marker, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", SUBREAPER_RUNS, str(tmp_path), BOMB, "40"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None", "the pilot's own child, from before the payload, was signalled"
    assert not _marked(marker), "a fork bomb process outlived its payload"
