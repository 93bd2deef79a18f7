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
import resource
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
from pilot.errors import ErrorCode, PilotError
from pilot.job import Job, check_name
from pilot.layout import INPUT_MANIFEST, JOB_REPORT, STDERR, STDOUT, TMP

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Variables of the pilot's environment that the payload keeps; everything else is dropped. The pilot's
# own credentials go to production payloads only, never to a user's (analysis) payload.
PASS_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SHELL",
            "X509_CERT_DIR", "X509_VOMS_DIR", "SITE_NAME")
PILOT_CREDENTIALS = ("X509_USER_PROXY", "BEARER_TOKEN_FILE")


def become_subreaper() -> bool:
    """Orphans of the payload are re-parented to this process (Linux >= 3.4); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


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


def payload_env(job: Job, workdir: Path, base: dict[str, str]) -> dict[str, str]:
    keep = PASS_ENV if job.is_analysis else PASS_ENV + PILOT_CREDENTIALS
    env = {k: v for k, v in base.items() if k in keep or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    tmp = workdir / TMP
    tmp.mkdir(exist_ok=True)
    cores = str(job.core_count)
    env.update({
        "PandaID": str(job.panda_id),
        "PanDA_TaskID": str(job.task_id),
        "PanDA_AttemptNr": str(job.attempt_nr),
        "PANDA_RESOURCE_TYPE": job.resource_type,
        "ATHENA_PROC_NUMBER": cores,
        "ATHENA_CORE_NUMBER": cores,
        "TMPDIR": str(tmp),
        "PILOT_JOB_REPORT": str(workdir / JOB_REPORT),
        "PILOT_INPUT_MANIFEST": str(workdir / INPUT_MANIFEST),  # written by stage-in (pilot/staging.py)
    })
    return env


def download_transformation(url: str, workdir: Path, timeout: float = 300.0) -> Path:
    """An analysis job's script, fetched into the work dir and made executable."""
    import requests  # only analysis jobs need it

    name = check_name(url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0], "transformation name")
    target = workdir / name
    try:
        with requests.get(url, timeout=timeout, stream=True) as reply:
            reply.raise_for_status()
            with open(target, "wb") as handle:
                for chunk in reply.iter_content(1 << 16):
                    handle.write(chunk)
    except (requests.RequestException, OSError) as exc:
        raise PilotError(ErrorCode.TRF_DOWNLOAD_FAILED, f"{url}: {exc}") from None
    target.chmod(0o755)
    return target


def build_command(job: Job, workdir: Path, queue: QueueConfig) -> list[str]:
    """argv for the payload: transformation + jobPars, no shell (except the queue's own setup snippet)."""
    try:
        args = shlex.split(job.job_pars)
    except ValueError as exc:
        raise PilotError(ErrorCode.CONVERSION_FAILURE, f"jobPars cannot be split: {exc}") from None
    trf = job.transformation
    if trf.startswith(("http://", "https://")):
        trf = str(download_transformation(trf, workdir))
    elif "/" not in trf and (workdir / trf).is_file():
        trf = f"./{trf}"  # a script that came in with the inputs
    argv = [trf, *args]
    if queue.setup:
        # The site's setup is itself a shell snippet; the payload's words stay positional parameters.
        argv = ["/bin/bash", "-c", f'{queue.setup}\nexec "$@"', "payload", *argv]
    return argv


@dataclass
class Tracked:
    pid: int
    created: float


@dataclass
class Payload:
    argv: list[str]
    workdir: Path
    env: dict[str, str]
    proc: Optional[subprocess.Popen] = None
    exited: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    ended: float = 0.0
    tracked: dict[int, Tracked] = field(default_factory=dict)
    _before: set[tuple[int, float]] = field(default_factory=set)
    _rusage_before: Optional[resource.struct_rusage] = None
    cpu_seconds: float = 0.0
    max_rss_kb: int = 0

    def start(self, on_exit: threading.Event) -> None:
        """Launch; `on_exit` is set when the payload's main process ends (it wakes the watcher)."""
        self._before = {(p.pid, _created(p)) for p in psutil.Process().children()}
        self._rusage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        stdout = open(self.workdir / STDOUT, "wb")
        stderr = open(self.workdir / STDERR, "wb")
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, start_new_session=True, close_fds=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            raise PilotError(ErrorCode.PAYLOAD_FAILED, f"cannot execute {self.argv[0]}: {exc.strerror}") from None
        finally:
            stdout.close()
            stderr.close()
        self.started = time.time()
        pid = self.proc.pid
        self.tracked[pid] = Tracked(pid, _created_pid(pid))
        log.info("payload started, pid %d: %s", pid, shlex.join(self.argv))

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
        """The payload's processes: the main one, its descendants, and any orphan re-parented to the
        pilot since the start (with the pilot a subreaper, a daemonizing payload lands there)."""
        found: dict[int, psutil.Process] = {}
        try:
            roots = [c for c in psutil.Process().children()
                     if (c.pid, _created(c)) not in self._before and _created(c) >= self.started - 1]
        except psutil.Error:
            roots = []
        for root in roots:
            found[root.pid] = root
            try:
                found.update((p.pid, p) for p in root.children(recursive=True))
            except psutil.Error:
                pass
        for pid, info in self.tracked.items():  # what polling saw, where the pilot is no subreaper
            if pid not in found:
                alive = _alive(info)
                if alive is not None:
                    found[pid] = alive
        for pid, p in found.items():
            self.tracked.setdefault(pid, Tracked(pid, _created(p)))
        return list(found.values())

    def _others(self) -> list[psutil.Process]:
        """Every payload process but the main one (which only reap() may collect)."""
        leader = self.proc.pid if self.proc is not None else -1
        return [p for p in self.processes() if p.pid != leader]

    def kill(self, grace: float) -> None:
        """SIGTERM to the process group and every payload process, `grace` seconds, then SIGKILL."""
        if self.proc is None:
            return
        deadline = time.monotonic() + grace
        self._signal_all(signal.SIGTERM, self._others())
        self.exited.wait(grace)
        psutil.wait_procs(self._others(), timeout=max(0.0, deadline - time.monotonic()))
        self._signal_all(signal.SIGKILL, self._others())
        self.exited.wait(10)
        self.reap()

    def reap(self) -> None:
        """Kill whatever of the payload is left after its main process ended, then collect that one."""
        if self.proc is None:
            return
        for _ in range(5):
            left = self._others()
            if not left:
                break
            log.info("killing %d leftover payload process(es): %s", len(left), [p.pid for p in left])
            self._signal_all(signal.SIGKILL, left)
            psutil.wait_procs(left, timeout=5)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.error("payload process %d does not end even after SIGKILL", self.proc.pid)
        self._account()

    def _signal_all(self, signum: int, procs: list[psutil.Process]) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:  # not yet reaped: the PID and group ID are still the payload's
            for send in (os.killpg, os.kill):  # the group, and the main process should it have left it
                try:
                    send(self.proc.pid, signum)
                except (ProcessLookupError, PermissionError):
                    pass
        for p in procs:
            try:
                p.send_signal(signum)
            except psutil.Error:
                pass

    def _account(self) -> None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        before = self._rusage_before
        if before is not None:
            self.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.max_rss_kb = max(self.max_rss_kb, after.ru_maxrss)


def _created(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.Error:
        return 0.0


def _created_pid(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return time.time()


def _alive(info: Tracked) -> Optional[psutil.Process]:
    """The tracked process if it still runs (the same process: pid and start time agree)."""
    try:
        p = psutil.Process(info.pid)
        if abs(p.create_time() - info.created) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None
