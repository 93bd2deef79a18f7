"""A real single-node Slurm (Debian slurm-wlm + munge) on loopback, for the pilot's launch tests.

``SlurmCluster.start(root)`` writes a munge key and a slurm.conf whose every state, spool, log and pid
path (and the munge socket) lies under ``root``, starts munged, slurmctld and slurmd in the foreground as
children of the test process (their PIDs are ours; ``stop()`` ends them by PID), and waits until the
node is idle. ``env()`` is the environment for sbatch/squeue/scancel (SLURM_CONF exported).
Facts (Slurm 22.05): CommunicationParameters=NoInAddrAny,NoCtldInAddrAny keeps the daemons on loopback;
SlurmdParameters=config_overrides lets the node declare more CPUs than the machine has, so several pilots
run at once; proctrack/linuxproc and task/none need no cgroups; JobCompType=jobcomp/filetxt records each
finished job (there is no accounting database, so `sacct` has nothing to say).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
PROGRAMS = ("sbatch", "squeue", "scancel", "sinfo", "munge")


def missing_programs() -> list[str]:
    found = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in DAEMONS + PROGRAMS}
    return [name for name, path in found.items() if not path]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _program(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


@dataclass
class SlurmJob:
    job_id: str
    state: str
    exit_code: str = ""


@dataclass
class SlurmCluster:
    root: Path
    cpus: int = 8
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.root / "jobcomp.txt"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.sock"

    def env(self, base: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def write_config(self) -> None:
        munge = self.root / "munge"
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge.mkdir(mode=0o711, exist_ok=True)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=pilotci
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=30
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN
PartitionName=ci Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=self.env(), cwd=self.root, start_new_session=True)

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        m = self.root / "munge"
        self._spawn("munged", [_program("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_program("slurmd"), "-D"])
        self._wait(self._idle, timeout, "the Slurm node to be idle")

    def _idle(self) -> bool:
        out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, env=self.env())
        return out.stdout.strip() == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}: {self.log_tail('slurmctld')} {self.log_tail('slurmd')}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "log" / f"{name}.out").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """The batch jobs still queued or running on this private Slurm first (a test that failed half-way may
        leave some: stopping slurmd alone would leave their slurmstepd and pilots behind), then the daemons
        we started, by PID: slurmd and slurmctld first, munged last."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # --- what the tests do with it -------------------------------------------------------------------
    def sbatch(self, argv: list[str], workdir: Path, name: str = "pilot", env: Optional[dict[str, str]] = None) -> str:
        """Submit a batch script (argv[0]) with its arguments; returns the batch job id."""
        out = subprocess.run(["sbatch", "--parsable", f"--job-name={name}", f"--chdir={workdir}",
                              f"--output={workdir}/slurm-%j.out", *argv],
                             capture_output=True, text=True, env=self.env(env), check=True)  # fmt: skip
        return out.stdout.strip().split(";")[0]

    def scancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], check=True, env=self.env())

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job this private controller knows (all were submitted by the tests) and wait for
        them to end: SIGTERM, then SIGKILL after KillWait."""
        def queued() -> list[str]:
            out = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True,
                                 env=self.env(), timeout=30)
            return out.stdout.split()

        jobs = queued()
        if not jobs:
            return
        subprocess.run(["scancel", *jobs], env=self.env(), timeout=30)
        deadline = time.monotonic() + timeout
        while queued() and time.monotonic() < deadline:
            time.sleep(0.5)

    def finished(self) -> dict[str, SlurmJob]:
        """Jobs Slurm has finished, from its job completion file."""
        jobs: dict[str, SlurmJob] = {}
        try:
            lines = self.jobcomp.read_text().splitlines()
        except FileNotFoundError:
            return jobs
        for line in lines:
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            job_id = fields.get("JobId")
            if job_id:
                jobs[job_id] = SlurmJob(job_id, fields.get("JobState", ""), fields.get("ExitCode", ""))
        return jobs

    def wait_finished(self, job_ids: list[str], timeout: float) -> dict[str, SlurmJob]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.finished()
            if all(j in done for j in job_ids):
                return {j: done[j] for j in job_ids}
            time.sleep(0.5)
        raise AssertionError(f"Slurm jobs {job_ids} not all finished after {timeout} s: {self.finished()}")

    def running(self, job_id: str) -> bool:
        out = subprocess.run(["squeue", "--noheader", "--format=%T", f"--jobs={job_id}"], capture_output=True,
                             text=True, env=self.env())
        return out.stdout.strip() == "RUNNING"
