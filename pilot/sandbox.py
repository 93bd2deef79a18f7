"""`sandbox: bubblewrap`: a bubblewrap sandbox around another launcher: the file system read-only, the
pilot's work area and its credentials hidden, only this job's parts visible, a PID namespace of its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.job import Job
from pilot.launcher import Launch, Launcher
from pilot.layout import JobDir


class Sandbox(Launcher):
    name = "bubblewrap"

    def __init__(self, queue: QueueConfig, inner: Launcher, pilot_dir: Path, hidden: list[str]) -> None:
        super().__init__(queue)
        self.inner = inner
        self.pilot_dir = pilot_dir
        self.hidden = hidden

    def prepare(self, job: Job, dirs: JobDir, argv: list[str], env: dict[str, str]) -> Launch:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise PilotError(ErrorCode.SETUP_FAILURE, "sandbox bubblewrap: bwrap is not installed")
        inner = self.inner.prepare(job, dirs, argv, env)
        box = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
               "--unshare-pid", "--unshare-ipc", "--new-session", "--tmpfs", str(self.pilot_dir),
               "--perms", "0711", "--dir", str(dirs.root), "--bind", str(dirs.payload), str(dirs.payload)]
        # the wrapper's status file is writable by the pilot's account alone: a refusing wrapper's record
        writable = (dirs.cred_dir, dirs.wrapper_status)
        for path in (dirs.wrapper, dirs.wrapper_status, dirs.proxy_dir, dirs.cred_dir):
            if path.exists():
                box += ["--bind" if path in writable else "--ro-bind", str(path), str(path)]
        for secret in self.hidden:  # the pilot's credential files, wherever they are
            if os.path.isfile(secret):
                box += ["--ro-bind", "/dev/null", secret]
        return Launch([*box, "--", *inner.argv], inner.env, inner.account)

    def exit_error(self, code: Optional[int], dirs: JobDir) -> Optional[PilotError]:
        return self.inner.exit_error(code, dirs)

    def cleanup(self, dirs: JobDir) -> None:
        self.inner.cleanup(dirs)
