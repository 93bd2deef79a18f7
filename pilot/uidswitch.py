"""`identity: uid`: the user's DN (from the user's proxy, else the job's prodUserID) is mapped to a local
account through the queue's grid-mapfile, and the payload runs as that account: switched by setpriv when
the pilot runs as root, else through the queue's `uid_command` (e.g. `sudo -n -u {user}`)."""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Optional

from pilot.accounts import Account, GridMap
from pilot.errors import ErrorCode, PilotError
from pilot.job import Job
from pilot.launcher import Launch, Switched, launcher_env
from pilot.layout import JobDir
from pilot.userproxy import PROXY_NAME, copy_for, fetch_user_proxy, proxy_identity

log = logging.getLogger(__name__)


class UidSwitch(Switched):
    name = "uid"

    def account_for(self, job: Job, proxy: Optional[Path]) -> Account:
        if not self.queue.grid_mapfile:
            raise PilotError(ErrorCode.GLEXEC, "identity uid needs a grid_mapfile")
        dn = proxy_identity(proxy) if proxy is not None else job.raw.get("prodUserID", "")
        if not dn or dn == "NULL":
            raise PilotError(ErrorCode.GLEXEC, "no user DN: neither a user proxy nor prodUserID")
        return GridMap.load(Path(self.queue.grid_mapfile)).account(dn)

    def prepare(self, job: Job, dirs: JobDir, argv: list[str], env: dict[str, str]) -> Launch:
        proxy = fetch_user_proxy(job, self.queue, dirs)
        account = self.account_for(job, proxy)
        self.handover(dirs, account)
        target = None
        if proxy is not None:
            target = dirs.cred_dir / PROXY_NAME
            copy_for(proxy, target, account)
        wrapper = self.write_wrapper(dirs, self.pass_credentials(dirs, env, account), target)
        if self.queue.uid_command:
            switch = [word.replace("{user}", account.name) for word in shlex.split(self.queue.uid_command)]
        elif os.geteuid() == 0:
            switch = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups",
                      "--inh-caps=-all", "--"]
        else:
            raise PilotError(ErrorCode.GLEXEC, "identity uid needs root or a uid_command (setpriv, sudo -n -u {user})")
        log.info("payload runs as %s (uid %d)", account.name, account.uid)
        return Launch([*switch, "/bin/bash", str(wrapper), *argv], launcher_env(env), account)
