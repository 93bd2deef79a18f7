"""What is left of a dead pilot's payload: only the recorded processes are ended, matched by start time."""

from __future__ import annotations

import subprocess
import sys

import psutil

from pilot.payload import process_identity
from recovery.leftovers import end_payload, payload_processes

SPAWN = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
        "print('ready', flush=True); time.sleep(60)"


def test_the_recorded_session_is_ended_leader_and_child(tmp_path):
    leader = subprocess.Popen([sys.executable, "-c", SPAWN], start_new_session=True, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert leader.stdout.readline().strip() == "ready"
        identity = process_identity(leader.pid)
        found = {p.pid for p in payload_processes(identity)}
        child = [p.pid for p in psutil.Process(leader.pid).children()]
        assert found == {leader.pid, *child} and len(child) == 1
        assert end_payload(identity) == []
        leader.wait(timeout=10)
        assert not psutil.pid_exists(child[0]) or psutil.Process(child[0]).status() == psutil.STATUS_ZOMBIE
    finally:
        leader.kill()
        leader.wait()


def test_a_process_with_another_start_time_is_never_touched():
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        identity = process_identity(stranger.pid)
        identity["start_time"] -= 100  # the recorded payload started earlier: this PID was reused since
        assert payload_processes(identity) == []
        assert end_payload(identity) == []
        assert stranger.poll() is None, "still running"
    finally:
        stranger.kill()
        stranger.wait()
