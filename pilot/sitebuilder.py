"""A throw-away site: the one builder behind `pandapilot demo`, `pandapilot selftest`, the tests and the benchmarks.

A site is a directory holding a job directory for the embedded dispatcher (`jobs/`), a storage directory
(`se/`), the pilot's work directory (`work/`) and a queue configuration (`queue.yaml`, written from
`queue_settings`). Jobs are the flat dictionaries a PanDA server sends; inputs are put into storage with
their size and adler32 checksum; what the dispatcher received is read back from its history.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilot.dispatcher.local import LocalDispatcher
from pilot.fsutil import atomic_write_json

FINAL_STATES = ("finished", "failed")


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def job_definition(panda_id: int, script: str = "true", inputs: tuple[dict[str, str], ...] = (),
                   outputs: tuple[str, ...] = (), scope: str = "scope", **extra: Any) -> dict[str, str]:
    """A job as a server sends it: `script` run by /bin/sh, the inputs (from put_input), the outputs and a log."""
    log = f"{panda_id}.log.tgz"
    outs = [*outputs, log]
    job = {
        "PandaID": str(panda_id), "attemptNr": "1", "transformation": "/bin/sh",
        "jobPars": f"-c {json.dumps(script)}", "prodSourceLabel": "managed",
        "inFiles": ",".join(f["lfn"] for f in inputs) or "NULL",
        "fsize": ",".join(f["fsize"] for f in inputs) or "NULL",
        "checksum": ",".join(f["checksum"] for f in inputs) or "NULL",
        "scopeIn": ",".join(f["scope"] for f in inputs) or "NULL",
        "GUID": ",".join(f"g-{panda_id}-{i}" for i in range(len(inputs))) or "NULL",
        "outFiles": ",".join(outs), "scopeOut": ",".join(scope for _ in outs),
        "logFile": log, "logGUID": f"log-{panda_id}",
    }  # fmt: skip
    job.update({k: str(v) for k, v in extra.items()})
    return job


@dataclass
class Site:
    root: Path
    queue_settings: dict[str, Any] = field(default_factory=dict)
    queue: str = "LOCAL_SITE"

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()
        self.jobs = self.root / "jobs"
        self.se = self.root / "se"
        self.work = self.root / "work"
        self.se.mkdir(parents=True, exist_ok=True)
        LocalDispatcher(self.jobs)  # lays out the job directory (claimed/, history/, commands/ ...)
        self.queue_settings = {"se": str(self.se), "seprodpath": "out", "transfer_retry_wait": 0.1,
                               "kill_grace": 3, **self.queue_settings}

    @property
    def dispatcher(self) -> LocalDispatcher:
        return LocalDispatcher(self.jobs)

    @property
    def outputs(self) -> Path:
        """Where production outputs of scope `scope` land."""
        return self.se / str(self.queue_settings.get("seprodpath", "")) / "scope"

    def put_input(self, name: str, data: bytes, scope: str = "scope") -> dict[str, str]:
        (self.se / scope).mkdir(exist_ok=True)
        (self.se / scope / name).write_bytes(data)
        return {"lfn": name, "fsize": str(len(data)), "checksum": f"ad:{adler32(data)}", "scope": scope}

    def add_job(self, panda_id: int, script: str = "true", inputs: tuple[dict[str, str], ...] = (),
                outputs: tuple[str, ...] = (), **extra: Any) -> dict[str, str]:
        job = job_definition(panda_id, script, inputs, outputs, **extra)
        atomic_write_json(self.jobs / f"{panda_id}.json", job)
        return job

    def add_raw(self, name: str, text: str) -> None:
        (self.jobs / name).write_text(text)

    def write_queue(self) -> Path:
        path = self.root / "queue.yaml"
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in self.queue_settings.items()))
        return path

    def run_options(self, *extra: str) -> list[str]:
        """`pandapilot run` options for a pilot that drains this site's jobs and stops."""
        return ["--queue", self.queue, "--dispatcher", str(self.jobs), "--queue-config", str(self.write_queue()),
                "--workdir", str(self.work), "--max-no-job", "1", "--no-job-wait", "0.05", "--max-failures", "0",
                *extra]

    def history(self, panda_id: int) -> list[dict[str, Any]]:
        return self.dispatcher.history(panda_id)

    def states(self, panda_id: int) -> list[str]:
        return [h["job_status"] for h in self.history(panda_id)]

    def final(self, panda_id: int) -> dict[str, Any]:
        history = self.history(panda_id)
        assert history, f"job {panda_id} was never reported"
        assert history[-1]["job_status"] in FINAL_STATES, history[-1]
        return history[-1]

    def final_or_none(self, panda_id: int) -> dict[str, Any]:
        """The job's final report, or {} when it has none (yet)."""
        history = self.history(panda_id)
        return history[-1] if history and history[-1]["job_status"] in FINAL_STATES else {}
