"""Harvester, the real PanDA pilot factory (pandaharvester 0.7.5 from its own venv), on loopback.

``HarvesterFactory(root, server, slurm, queues).start()`` writes under ``root`` a PANDA_HOME with
panda_harvester.cfg (from the venv's template: SQLite, v1 against the loopback panda-server with the
harness's client certificate, 5 s agent cycles), panda_common.cfg (the shipped template, only logdir
changed), the queue configuration and each queue's sbatch template, then starts the master in the
foreground as our child (its PID is ours: ``stop()`` ends it). Each queue submits through the single-node
Slurm with SlurmSubmitter, watches with SlurmBulkMonitor (squeue -t all: there is no accounting database for
sacct), sweeps with SlurmSweeper, and talks to its workers through SharedFileMessenger (access point
``root/workers/<queue>/<workerID>``). Facts behind the settings: shared/reference/harvester-on-loopback.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tests.integration.pandaserver import PandaServer, cache_root
from tests.integration.slurm import SlurmCluster

HARVESTER_ID = "pilot-ci-harvester"


def venv() -> Path:
    return cache_root() / "venv-harvester"


def venv_ready() -> bool:
    return (venv() / "bin" / "python").is_file() and (venv() / "etc" / "panda" / "panda_harvester.cfg.rpmnew").is_file()


@dataclass
class Queue:
    """One Harvester queue = one PanDA site (the server takes any site name)."""

    name: str
    map_type: str  # NoJob (pull) or OneToOne (push)
    true_pilot: bool
    pilot_command: str  # the batch script's command, with Harvester's {placeholders}
    workers: int = 2
    late_binding: bool = False  # useJobLateBinding: workers go out without a job and ask for one
    heartbeat_limit: int = 0  # messenger.worker_heartbeat: minutes a worker's heartbeat file may age (0: unchecked)
    after_pilot: str = ""  # batch script lines after the pilot (the batch job holds its allocation on)

    def config(self, root: Path, template: Path) -> dict:
        plugin = "pandaharvester.harvester{}.{}".format
        messenger = {"name": "SharedFileMessenger", "module": plugin("messenger", "shared_file_messenger"),
                     "accessPoint": f"{root}/workers/{self.name}/${{workerID}}"}
        if self.heartbeat_limit:
            messenger["worker_heartbeat"] = self.heartbeat_limit
        return {
            "queueStatus": "online", "prodSourceLabel": "managed", "mapType": self.map_type,
            "useJobLateBinding": self.late_binding,
            "truePilot": self.true_pilot, "nQueueLimitWorker": self.workers, "maxWorkers": self.workers,
            "maxNewWorkersPerCycle": self.workers, "nQueueLimitJob": self.workers, "maxSubmissionAttempts": 1,
            "preparator": {"name": "DummyPreparator", "module": plugin("preparator", "dummy_preparator")},
            "submitter": {"name": "SlurmSubmitter", "module": plugin("submitter", "slurm_submitter"),
                          "templateFile": str(template), "nCore": 1, "nCorePerNode": 1,
                          "logDir": str(root / "batch-logs")},
            "workerMaker": {"name": "SimpleWorkerMaker", "module": plugin("workermaker", "simple_worker_maker")},
            "messenger": messenger,
            "stager": {"name": "DummyStager", "module": plugin("stager", "dummy_stager")},
            "monitor": {"name": "SlurmBulkMonitor", "module": plugin("monitor", "slurm_bulk_monitor"),
                        "use_squeue_monitor": True},
            "sweeper": {"name": "SlurmSweeper", "module": plugin("sweeper", "slurm_sweeper")},
        }  # fmt: skip

    def batch_script(self) -> str:
        run = f"{self.pilot_command}\n{self.after_pilot}\n" if self.after_pilot else f"exec {self.pilot_command}\n"
        return ("#!/bin/bash\n"
                "#SBATCH -o {accessPoint}/slurm-%j.out\n"
                "#SBATCH -J hv-{workerID}\n"
                "export HARVESTER_ID={harvesterID} HARVESTER_WORKER_ID={workerID} PANDA_QUEUE={computingSite}\n"
                "export HARVESTER_ACCESS_POINT={accessPoint}\n"
                + run)


def set_ini(text: str, section: str, values: dict[str, Optional[str]]) -> str:
    """Set (or with None remove) ``key = value`` in ``[section]``; a replaced key's continuation lines go too."""
    out: list[str] = []
    current = ""
    skipping = False
    remaining = dict(values)
    for line in text.splitlines():
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            if current == section:
                out.extend(f"{k} = {v}" for k, v in remaining.items() if v is not None)
                remaining.clear()
            current, skipping = header.group(1), False
            out.append(line)
            continue
        if skipping and line[:1] in (" ", "\t") and line.strip():
            continue  # a continuation line of a replaced value
        skipping = False
        key = re.match(r"^([A-Za-z0-9_.\-]+)\s*=", line)
        if current == section and key and key.group(1) in values:
            skipping = True
            value = remaining.pop(key.group(1), None)
            if value is not None:
                out.append(f"{key.group(1)} = {value}")
            continue
        out.append(line)
    if current == section:
        out.extend(f"{k} = {v}" for k, v in remaining.items() if v is not None)
    return "\n".join(out) + "\n"


@dataclass
class HarvesterFactory:
    root: Path
    server: PandaServer
    slurm: SlurmCluster
    queues: list[Queue]
    cycle: int = 5  # seconds between agent cycles
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    def access_points(self, queue: str) -> Path:
        return self.root / "workers" / queue

    def env(self) -> dict[str, str]:
        site = subprocess.run([str(venv() / "bin" / "python"), "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        env = {k: v for k, v in self.slurm.env().items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "X509_"))}
        env.update(PANDA_HOME=str(self.home), PYTHONPATH=f"{site}/pandacommon:{site}", HOME=str(self.home),
                   PATH=f"{venv() / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", NO_PROXY="127.0.0.1,localhost")
        return env

    def write_config(self) -> None:
        etc = self.home / "etc" / "panda"
        etc.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        templates = venv() / "etc" / "panda"
        srv, c = self.server, str(self.cycle)
        sections: dict[str, dict[str, Optional[str]]] = {
            "master": {"uname": "root", "gname": "root", "harvester_id": HARVESTER_ID},
            "db": {"engine": "sqlite", "database_filename": str(self.root / "harvester.db"), "nConnections": "4"},
            "fifo": {"database_filename": str(self.root / "$(TITLE)_fifo.db")},
            "pandacon": {"auth_type": "x509", "ca_cert": str(srv.ca_cert), "cert_file": str(srv.client_cert),
                         "key_file": str(srv.client_key), "pandaURL": f"{srv.url}/server/panda",
                         "pandaURLSSL": f"{srv.url}/server/panda", "server_api_url": f"{srv.url}/api/v1",
                         "server_api_url_ssl": f"{srv.url}/api/v1", "pandaCacheURL_W": f"{srv.url}/server/panda",
                         "cache_api_url_ssl": f"{srv.url}/api/v1", "pandaCacheURL_R": f"{srv.url}/cache",
                         "timeout": "30", "auth_token": None, "auth_origin": None},
            "qconf": {"configFile": "panda_queueconfig.json", "queueList": " ".join(q.name for q in self.queues),
                      "resolverModule": None, "resolverClass": None, "checkInterval": c},
            "credmanager": {"moduleName": "", "className": "", "inCertFile": "", "outCertFile": "", "voms": ""},
            "commandmanager": {"sleepTime": c},
            "jobfetcher": {"sleepTime": c, "lookupTime": c},
            "propagator": {"sleepTime": c, "updateInterval": c, "lockInterval": c},
            "preparator": {"sleepTime": c, "checkInterval": c, "triggerInterval": c},
            "submitter": {"sleepTime": c, "checkInterval": c, "lookupTime": c},
            "monitor": {"sleepTime": c, "checkInterval": c},
            "stager": {"sleepTime": c, "checkInterval": c, "triggerInterval": c},
            "eventfeeder": {"sleepTime": c},
            "cacher": {"data": "\n resource_types.json||panda_server:get_resource_types", "sleepTime": c},
            "sweeper": {"sleepTime": c, "checkInterval": c, "keepFinished": "1", "keepFailed": "1",
                        "keepCancelled": "1", "keepMissed": "1"},
            "watcher": {"sleepTime": "600", "checkInterval": "600"},
            "apfmon": {"active": "False"},
            "service_monitor": {"active": "False"},
            "payload_interaction": {"jobSpecFile": "pandaJobData.out"},
        }  # fmt: skip
        text = (templates / "panda_harvester.cfg.rpmnew").read_text()
        for section, values in sections.items():
            text = set_ini(text, section, values)
        (etc / "panda_harvester.cfg").write_text(text)
        common = set_ini((templates / "panda_common.cfg.rpmnew").read_text(), "logger", {"logdir": str(self.log_dir)})
        (etc / "panda_common.cfg").write_text(common)
        queues = {}
        for queue in self.queues:
            template = self.root / f"sbatch-{queue.name}.sh"
            template.write_text(queue.batch_script())
            self.access_points(queue.name).mkdir(parents=True, exist_ok=True)
            queues[queue.name] = queue.config(self.root, template)
        (etc / "panda_queueconfig.json").write_text(json.dumps(queues, indent=1))

    def start(self, timeout: float = 120) -> None:
        self.write_config()
        argv = [str(venv() / "bin" / "python"), "-m", "pandaharvester.harvesterbody.master", "--foreground",
                "--pid", str(self.root / "master.pid")]
        with open(self.root / "master.out", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env(), cwd=self.home, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.log_dir / "panda-submitter.log").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"Harvester exited with {self.proc.returncode}: {self.tail('master.out')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Harvester's agents did not start: {self.tail('master.out')}")
            time.sleep(0.5)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.root / name if not name.startswith("panda-") else self.log_dir / name
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        """The master we started, by PID (its agents are its threads), and its process group's stragglers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def workers(self) -> list[dict]:
        """Harvester's worker table (SQLite)."""
        return self._select("SELECT * FROM work_table")

    def worker_of(self, panda_id: int) -> Optional[dict]:
        """The worker Harvester gave the job to (its job-worker table), or None."""
        rows = self._select("SELECT w.* FROM work_table w JOIN jw_table r ON r.workerID = w.workerID "
                            "WHERE r.PandaID = ?", (panda_id,))
        return rows[0] if rows else None

    def _select(self, query: str, params: tuple = ()) -> list[dict]:
        import sqlite3

        with sqlite3.connect(self.root / "harvester.db", timeout=30) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(query, params)]

    def log_lines(self, agent: str, text: str) -> list[str]:
        """Lines of an agent's log (panda-<agent>.log) that hold `text`."""
        try:
            lines = (self.log_dir / f"panda-{agent}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if text in line]
