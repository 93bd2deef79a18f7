"""`identity: glexec`: the glexec binary maps the user's proxy to an account (its own mapping) and
switches; the payload runs as `glexec /bin/bash <wrapper> <payload argv...>` with GLEXEC_CLIENT_CERT and
GLEXEC_SOURCE_PROXY pointing at the user's proxy and GLEXEC_TARGET_PROXY at the account's copy."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Optional

from pilot.accounts import Account
from pilot.errors import ErrorCode, PilotError
from pilot.job import Job
from pilot.launcher import Launch, Switched
from pilot.layout import JobDir
from pilot.userproxy import PROXY_NAME, fetch_user_proxy, proxy_identity

log = logging.getLogger(__name__)

GLEXEC_CODES = {  # glexec's own exit codes (since glexec 0.6)
    201: "client error (no or unreadable user proxy, bad proxy permissions, target proxy location not "
         "accessible, or the command cannot be executed)",
    202: "system error (glexec's configuration or LCAS/LCMAPS initialisation)",
    203: "authorization error (the user's DN is not allowed or not mapped to an account)",
}
GLEXEC_OVERLAP = 204  # the payload itself exited 201-204


class Glexec(Switched):
    name = "glexec"

    def binary(self) -> str:
        candidates = [self.queue.glexec_path] if self.queue.glexec_path else []
        for var in ("GLEXEC_LOCATION", "OSG_GLEXEC_LOCATION", "GLITE_LOCATION"):
            if os.environ.get(var):
                candidates.append(os.path.join(os.environ[var], "sbin", "glexec"))
        for path in candidates:
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise PilotError(ErrorCode.GLEXEC, "glexec not found (glexec_path, $GLEXEC_LOCATION/sbin/glexec, "
                                           "$OSG_GLEXEC_LOCATION, $GLITE_LOCATION)")

    def glexec_env(self, proxy: Path, target: Path) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GLEXEC_CLIENT_CERT": str(proxy),
                "GLEXEC_SOURCE_PROXY": str(proxy), "GLEXEC_TARGET_PROXY": str(target)}

    def mapped_account(self, glexec: str, proxy: Path, target: Path) -> Account:
        """Ask glexec who the user becomes (it does its own mapping): `glexec /usr/bin/id -un`."""
        try:
            done = subprocess.run([glexec, "/usr/bin/id", "-un"], capture_output=True, text=True, timeout=120,
                                  env=self.glexec_env(proxy, target), stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PilotError(ErrorCode.GLEXEC, f"glexec cannot run: {exc}") from None
        error = self.code_error(done.returncode)
        if error is not None:
            raise PilotError(error.code, f"{error.diag}: {done.stderr.strip()[-200:]}")
        if done.returncode != 0:
            raise PilotError(ErrorCode.GLEXEC, f"glexec identity probe exited with code {done.returncode}")
        return Account.named(done.stdout.strip())

    def prepare(self, job: Job, dirs: JobDir, argv: list[str], env: dict[str, str]) -> Launch:
        glexec = self.binary()
        proxy = fetch_user_proxy(job, self.queue, dirs)
        if proxy is None:
            raise PilotError(ErrorCode.NO_PROXY, "glexec needs the user's proxy: the job brought none "
                                                 "(getProxyKey) and no user_proxy_command is set")
        proxy_identity(proxy)  # fails an expired or broken proxy before glexec sees it
        # The account is glexec's to choose: until it is known, the credentials dir takes a new file from
        # anyone (sticky, not listable); then it becomes the account's alone.
        dirs.cred_dir.mkdir(mode=0o700)
        os.chmod(dirs.cred_dir, 0o1733)
        target = dirs.cred_dir / PROXY_NAME
        account = self.mapped_account(glexec, proxy, target)
        self.handover(dirs, account)
        try:  # the probe's copy: the payload's run makes a fresh one
            target.unlink()
        except FileNotFoundError:
            pass
        wrapper = self.write_wrapper(dirs, self.pass_credentials(dirs, env, account), target)
        log.info("payload runs through %s as %s (uid %d)", glexec, account.name, account.uid)
        return Launch([glexec, "/bin/bash", str(wrapper), *argv], self.glexec_env(proxy, target), account)

    @staticmethod
    def code_error(code: Optional[int]) -> Optional[PilotError]:
        """glexec's own exit codes."""
        if code in GLEXEC_CODES:
            return PilotError(ErrorCode.GLEXEC, f"glexec {code}: {GLEXEC_CODES[code]}")
        if code == GLEXEC_OVERLAP:
            return PilotError(ErrorCode.PAYLOAD_FAILED, "payload exited with a code in glexec's own range 201-204 "
                                                        "(glexec 204)")
        return None

    def exit_error(self, code: Optional[int], dirs: JobDir) -> Optional[PilotError]:
        return self.code_error(code) or super().exit_error(code, dirs)
