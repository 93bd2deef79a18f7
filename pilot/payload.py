"""The payload: its command, its environment, its launch, and the process tree it owns.

The payload runs in its own process group and session. The pilot makes itself a child subreaper
(Linux), so any process of the payload that double-forks or calls setsid is re-parented to the pilot
instead of to init: everything the payload started stays findable, and the pilot kills exactly that,
nothing else on the node.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

from pilot.config import QueueConfig
from pilot.diskspace import reserve_tail
from pilot.errors import ErrorCode, PilotError
from pilot.job import Job, value
from pilot.layout import INPUT_MANIFEST, JOB_REPORT, STDERR, STDOUT, TMP
from pilot.subreaper import SubreaperTracker
from pilot.tracker import Tracker

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

# Variables of the pilot's environment that the payload keeps; everything else is dropped. The pilot's
# own credentials go to production payloads only when the queue names them, never to a user's payload.
PASS_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SHELL",
            "X509_CERT_DIR", "X509_VOMS_DIR", "SITE_NAME")


def process_identity(pid: int) -> dict[str, Any]:
    """What tells this process (and its group and session) from a later one that reuses the numbers."""
    identity: dict[str, Any] = {"pid": pid, "start_time": None, "pgid": None, "sid": None}
    try:
        identity.update(pgid=os.getpgid(pid), sid=os.getsid(pid), start_time=psutil.Process(pid).create_time())
    except (OSError, psutil.Error):
        pass
    return identity


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For the payload's leader, between fork and exec: it gets SIGKILL when the pilot dies (Linux), so
    a killed pilot does not leave its payload writing on into an abandoned work dir. The C function is
    looked up here, in the pilot, so that the child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def arm() -> None:
        if prctl is None or prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
        if os.getppid() != parent:  # the pilot died before the signal was armed
            os._exit(137)

    return arm


CORE_VARIABLES = ("ATHENA_PROC_NUMBER", "ATHENA_CORE_NUMBER", "OMP_NUM_THREADS", "PANDA_CORE_COUNT")


def cores_for(job: Job, queue: QueueConfig) -> int:
    """The job's cores: its coreCount, else the queue's corecount, else 1."""
    if value(job.raw, "coreCount"):
        return job.core_count
    return queue.corecount if queue.corecount > 0 else job.core_count


def payload_env(job: Job, workdir: Path, base: dict[str, str], credentials: tuple[str, ...] = (),
                cores: int = 0, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The payload's environment: a few of the pilot's variables, none of its credentials but those
    named in `credentials` (the queue's `payload_credentials`), which only production jobs get; the
    job's cores; `extra` (the release's variables)."""
    keep = PASS_ENV if job.is_analysis else PASS_ENV + credentials
    env = {k: v for k, v in base.items() if k in keep or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    tmp = workdir / TMP
    tmp.mkdir(exist_ok=True)
    env.update({
        "PandaID": str(job.panda_id),
        "PanDA_TaskID": str(job.task_id),
        "PanDA_AttemptNr": str(job.attempt_nr),
        "PANDA_RESOURCE_TYPE": job.resource_type,
        "TMPDIR": str(tmp),
        "PILOT_JOB_REPORT": str(workdir / JOB_REPORT),
        "PILOT_INPUT_MANIFEST": str(workdir / INPUT_MANIFEST),  # written by stage-in (pilot/staging.py)
    })
    env.update(dict.fromkeys(CORE_VARIABLES, str(cores or job.core_count)))
    env.update(extra or {})
    return env


def build_command(job: Job, workdir: Path, transformation: Optional[Path] = None) -> list[str]:
    """argv for the payload: transformation (or the downloaded script) + jobPars, never a shell."""
    try:
        args = shlex.split(job.job_pars)
    except ValueError as exc:
        raise PilotError(ErrorCode.CONVERSION_FAILURE, f"jobPars cannot be split: {exc}") from None
    trf = job.transformation
    if transformation is not None:
        trf = f"./{transformation.name}" if transformation.parent == workdir else str(transformation)
    elif "/" not in trf and (workdir / trf).is_file():
        trf = f"./{trf}"  # a script that came in with the inputs
    return [trf, *args]


@dataclass
class Payload:
    """One run of the payload: `argv` and `env` as the launcher made them, in `workdir` (the payload's part
    of the job's work dir), its processes followed by `tracker` (a cgroup, or the subreaper walk)."""

    argv: list[str]
    workdir: Path
    env: dict[str, str]
    tracker: Tracker = field(default_factory=SubreaperTracker)
    stdout: Optional[Path] = None  # default: payload.stdout / payload.stderr in `workdir`
    stderr: Optional[Path] = None
    proc: Optional[subprocess.Popen] = None
    exited: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    ended: float = 0.0
    cpu_seconds: float = 0.0  # user + system time of every payload process (the reaped ones too)

    def start(self, on_exit: threading.Event) -> None:
        """Launch; `on_exit` is set when the payload's main process ends (it wakes the watcher). The
        output files are created new, never opened through a name the payload could have planted."""
        out_fd = create_new(self.stdout or self.workdir / STDOUT)
        try:
            err_fd = create_new(self.stderr or self.workdir / STDERR)
        except BaseException:
            os.close(out_fd)
            raise
        reserve_tail(err_fd)  # the payload's last words survive a full disk
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=out_fd, stderr=err_fd, start_new_session=True, close_fds=True,
                preexec_fn=_in_child(_die_with_parent(os.getpid()), self.tracker.preexec()),
            )
        except OSError as exc:
            self.tracker.close()
            raise PilotError(ErrorCode.PAYLOAD_FAILED, f"cannot execute {self.argv[0]}: {exc.strerror}") from None
        finally:
            os.close(out_fd)
            os.close(err_fd)
        self.started = time.time()
        pid = self.proc.pid
        self.tracker.attach(pid, self.started)
        log.info("payload started, pid %d (%s tracking): %s", pid, self.tracker.kind, shlex.join(self.argv))

        def wait() -> None:
            # Notice the end without reaping: the zombie keeps the PID, and with it the process group
            # ID, ours until reap(), so a group signal can never reach a stranger that reused the number.
            try:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            self.ended = time.time()
            self.exited.set()
            on_exit.set()

        threading.Thread(target=wait, name="payload-wait", daemon=True).start()

    @property
    def returncode(self) -> Optional[int]:
        """The main process's exit status, once reap() has collected it."""
        return self.proc.returncode if self.proc is not None else None

    def processes(self) -> list[psutil.Process]:
        """The payload's live processes."""
        return self.tracker.processes()

    def memory_bytes(self) -> Optional[int]:
        """The tree's memory as the kernel accounts it (a cgroup with a memory controller), else None."""
        return self.tracker.memory_bytes()

    def memory_peak_bytes(self) -> Optional[int]:
        """The tree's highest memory so far as the kernel accounts it, else None."""
        return self.tracker.memory_peak_bytes()

    def kill(self, grace: float) -> None:
        """SIGTERM to the process group and every payload process, `grace` seconds, then SIGKILL."""
        if self.proc is None:
            return
        deadline = time.monotonic() + grace
        self._signal_leader(signal.SIGTERM)
        self.tracker.signal(signal.SIGTERM)
        self.exited.wait(grace)
        self.tracker.wait_empty(max(0.0, deadline - time.monotonic()), exclude=self.proc.pid)
        self._signal_leader(signal.SIGKILL)
        self.tracker.kill_all()
        self.exited.wait(10)
        self.reap()

    def reap(self) -> None:
        """Kill whatever of the payload is left after its main process ended, then collect that one."""
        if self.proc is None:
            return
        left = self.tracker.pids() - {self.proc.pid}
        if left:
            log.info("killing %d leftover payload process(es): %s", len(left), sorted(left))
            self.tracker.kill_all(exclude=self.proc.pid)
        if not self.tracker.wait_empty(10, exclude=self.proc.pid):
            log.error("payload processes %s do not end even after SIGKILL",
                      sorted(self.tracker.pids() - {self.proc.pid}))
        leader_cpu = 0.0
        if self.proc.returncode is None:
            reaped = _wait4(self.proc.pid, 30)
            if reaped is None:
                log.error("payload process %d does not end even after SIGKILL", self.proc.pid)
            else:
                self.proc.returncode = os.waitstatus_to_exitcode(reaped[0])
                leader_cpu = reaped[1]
        in_cgroup = self.tracker.cpu_seconds()  # the kernel's account of every process, where there is one
        self.tracker.close()
        self.cpu_seconds = in_cgroup if in_cgroup is not None else leader_cpu + self.tracker.reaped_cpu

    def _signal_leader(self, signum: int) -> None:
        """The group, and the main process should it have left it, while it is not reaped (the PID and
        group ID are still the payload's then)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            for send in (os.killpg, os.kill):
                try:
                    send(self.proc.pid, signum)
                except ProcessLookupError:
                    pass
                except PermissionError:
                    log.error("cannot signal the payload (pid %d): permission denied", self.proc.pid)


def _wait4(pid: int, timeout: float) -> Optional[tuple[int, float]]:
    """Reap the payload's first process: (wait status, CPU seconds of it and of every process it reaped),
    or None when it did not end within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got == pid:
            return status, usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _in_child(*steps: Optional[Callable[[], None]]) -> Callable[[], None]:
    """The steps the payload's leader takes between fork and exec, in order."""
    todo = [step for step in steps if step is not None]

    def run() -> None:
        for step in todo:
            step()

    return run


def create_new(path: Path, mode: int = 0o644) -> int:
    """A new file for writing: fails if anything (a planted link, a FIFO) already has the name."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise PilotError(ErrorCode.SETUP_FAILURE, f"{path.name} exists before the payload started") from None
    except OSError as exc:
        raise PilotError(ErrorCode.SETUP_FAILURE, f"cannot create {path.name}: {exc.strerror}") from None
