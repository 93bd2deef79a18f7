"""The signal relay: a signal reaches the pilot's loop whatever a payload writes into (or reads from) the
relay's pipe through /proc/<pid>/fd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

PILOT = textwrap.dedent("""
    import os, signal, sys
    from pilot.control import Control
    control = Control()
    control.install_signal_handlers()
    print("ready", flush=True)
    sys.stdin.readline()                      # the test meddles with the pipe meanwhile
    print("stopping" if control.stopping.is_set() else "running", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    # the pilot's main thread waits in short ticks, so that Python runs the handler even when the kernel
    # gave the signal to another thread; the same here, within 10 s
    stopped = any(control.stopping.wait(0.1) for _ in range(100))
    print(f"stopped={stopped} signum={control.signum} kill={control.job_kill.code if control.job_kill else None}",
          flush=True)
""")


def _pipes(pid: int) -> list[str]:
    fd_dir = f"/proc/{pid}/fd"
    return [os.path.join(fd_dir, fd) for fd in os.listdir(fd_dir)
            if int(fd) > 2 and os.readlink(os.path.join(fd_dir, fd)).startswith("pipe:")]


def _meddle(pid: int) -> None:
    """What a hostile payload of the same user can do: flood every pipe of the pilot (but the test's own
    stdin/stdout) with signal numbers and garbage, and drain every pipe it can read."""
    for path in _pipes(pid):
        for flags in (os.O_WRONLY, os.O_RDONLY):
            try:
                fd = os.open(path, flags | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if flags == os.O_WRONLY:
                    for junk in (bytes([signal.SIGTERM] * 64), b"\0\xff" * 64, bytes(range(256)) * 300):
                        try:
                            os.write(fd, junk)
                        except BlockingIOError:
                            break
                else:
                    try:
                        while os.read(fd, 65536):
                            pass
                    except BlockingIOError:
                        pass
            finally:
                os.close(fd)


def test_bytes_in_the_relay_pipe_are_no_signal_and_a_later_sigterm_still_arrives():
    pilot = subprocess.Popen([sys.executable, "-c", PILOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert pilot.stdout.readline().strip() == "ready"
        _meddle(pilot.pid)
        _meddle(pilot.pid)
        pilot.stdin.write("go\n")
        pilot.stdin.flush()
        assert pilot.stdout.readline().strip() == "running"  # junk bytes did not stop the pilot
        assert pilot.stdout.readline().strip() == f"stopped=True signum={int(signal.SIGTERM)} kill=1201"
    finally:
        pilot.kill()
        pilot.wait()


def test_a_sigterm_blocked_by_the_pilots_parent_still_arrives():
    """The signal mask is inherited across exec: a parent that left SIGTERM blocked must not make the pilot
    deaf to it."""
    pilot = subprocess.Popen([sys.executable, "-c", PILOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}))
    try:
        assert pilot.stdout.readline().strip() == "ready"
        pilot.stdin.write("go\n")
        pilot.stdin.flush()
        assert pilot.stdout.readline().strip() == "running"
        assert pilot.stdout.readline().strip() == f"stopped=True signum={int(signal.SIGTERM)} kill=1201"
    finally:
        pilot.kill()
        pilot.wait()
