"""The shared runner of command-line movers: setup sourced, argv only, bounded time, group killed."""

from __future__ import annotations

import os
import threading
import time

import pytest

from sitemovers.base import Failure, TransferError
from sitemovers.command import run, timeout_for


def failure_of(call) -> TransferError:
    with pytest.raises(TransferError) as info:
        call()
    return info.value


def test_setup_is_sourced_and_names_stay_words(tmp_path):
    setup = tmp_path / "setup with space.sh"
    setup.write_text("export MOVER_FROM_SETUP=yes\n")
    hostile = "a b; touch pwned $(id) `id` ' \" %#"
    done = run(["bash", "-c", 'printf "%s|%s" "$MOVER_FROM_SETUP" "$1"', "x", hostile], setup=str(setup),
               timeout=30)
    assert done.stdout == f"yes|{hostile}"
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_a_failing_setup_script_is_a_setup_failure(tmp_path):
    setup = tmp_path / "setup.sh"
    setup.write_text("echo 'cannot find the grid client' >&2; return 3\n")
    err = failure_of(lambda: run(["true"], setup=str(setup), timeout=30))
    assert err.failure is Failure.SETUP and "setup.sh" in err.diag


def test_a_missing_tool_is_unsupported():
    err = failure_of(lambda: run(["no-such-mover-tool-x"], timeout=30))
    assert err.failure is Failure.UNSUPPORTED


@pytest.mark.parametrize("stderr, failure", [
    ("rfcp: /castor/x: No such file or directory", Failure.NOT_FOUND),
    ("open: Permission denied", Failure.AUTH),
    ("write: No space left on device", Failure.NO_SPACE),
    ("something odd", Failure.FAILED),
])
def test_exit_code_and_stderr_map_to_a_failure(stderr, failure):
    err = failure_of(lambda: run(["bash", "-c", 'echo "$1" >&2; exit 1', "x", stderr], timeout=30))
    assert err.failure is failure
    assert stderr in err.diag and "\n" not in err.diag


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _group_alive(pidfile) -> bool:
    """The child still runs 30 s after its group got SIGKILL (delivery is asynchronous: on a loaded
    machine the child may take a moment to die; it never survives)."""
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _running(pid)


def test_timeout_kills_the_whole_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f'sleep 300 & echo $! > {pidfile}; wait'  # a child that would outlive its parent
    started = time.monotonic()
    err = failure_of(lambda: run(["bash", "-c", script], timeout=1.0))
    assert err.failure is Failure.TIMEOUT
    assert time.monotonic() - started < 60
    assert not _group_alive(pidfile)


def test_cancel_kills_the_whole_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    cancel = threading.Event()
    script = f'sleep 300 & echo $! > {pidfile}; wait'
    timer = threading.Thread(target=lambda: (_wait_for(pidfile), cancel.set()))
    timer.start()
    err = failure_of(lambda: run(["bash", "-c", script], timeout=600, cancel=cancel))
    timer.join()
    assert err.failure is Failure.CANCELLED
    assert not _group_alive(pidfile)


def _wait_for(path) -> None:
    while not (path.exists() and path.read_text().strip()):
        time.sleep(0.01)


def test_output_is_bounded():
    done = run(["bash", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"], timeout=30)
    assert len(done.stdout) <= 8192


def test_timeout_grows_with_the_file_size():
    assert timeout_for(0) == 400
    assert timeout_for(100 << 20) == 500
    assert timeout_for(10 << 40) == 6 * 3600
