"""The launch seam: what turns the payload's argv and environment into what the pilot starts, and the
wrapper script that the switched modes (uid, glexec) start the payload through.

The wrapper, a file of the pilot's part of the job dir, re-exports a clean environment (nothing of the
pilot's credentials, the target's HOME, USER and LOGNAME, no LD_PRELOAD), makes a private temp dir, sets
the umask, refuses to run as the pilot's account, and execs the payload's argv (passed as positional
parameters, never through a shell string). A refusal is told by the wrapper status file, which the pilot
makes empty before the launch, 0600 in its own part: the wrapper writes into it only when it runs as the
pilot's account, the one account that can, so a payload that exits with the refusal's code (200) is a
payload failure with its own exit code, never taken for a refusal.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pilot.accounts import Account
from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.fsutil import read_capped
from pilot.job import Job
from pilot.layout import JobDir
from pilot.userproxy import copy_for

log = logging.getLogger(__name__)

WRAPPER_REFUSED = 200  # the wrapper's exit code when it finds itself running as the pilot's account
REFUSED = b"refused"  # what it writes into the wrapper status file then
CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    account: Optional[Account] = None  # None: the pilot's own


class Launcher(ABC):
    name = ""

    def __init__(self, queue: QueueConfig) -> None:
        self.queue = queue

    @abstractmethod
    def prepare(self, job: Job, dirs: JobDir, argv: list[str], env: dict[str, str]) -> Launch:
        """Turn the payload's argv and environment into what the pilot starts."""

    def exit_error(self, code: Optional[int], dirs: JobDir) -> Optional[PilotError]:
        """A failure of the launcher itself, told by the exit code and what it left in the pilot's part
        of `dirs`; None when the code is the payload's."""
        return None

    def cleanup(self, dirs: JobDir) -> None:
        """After the payload: no copy of the user's proxy, no wrapper is left, whatever happened (the
        wrapper's status file, the pilot's, stays with the job dir: exit_error reads it afterwards)."""
        for path in (dirs.proxy_dir, dirs.cred_dir):
            shutil.rmtree(path, ignore_errors=True)
        try:
            dirs.wrapper.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # a job dir turned read-only: the job fails for that, never the pilot
            log.warning("wrapper %s not removed: %s", dirs.wrapper, exc.strerror or exc)


class NoSwitch(Launcher):
    name = "none"

    def prepare(self, job: Job, dirs: JobDir, argv: list[str], env: dict[str, str]) -> Launch:
        return Launch(argv, env)


class Switched(Launcher):
    """What uid and glexec share: the wrapper, the payload's part handed to the account."""

    def handover(self, dirs: JobDir, account: Account) -> None:
        """The payload's part (and its credentials dir) become the account's, as root; the job dir
        stays the pilot's, traversable, not listable."""
        if account.uid in (0, os.getuid()):
            raise PilotError(ErrorCode.GLEXEC, f"refusing to run the payload as the pilot's account {account.name}")
        for path in (dirs.payload, dirs.cred_dir):
            path.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() != 0:
            return  # through sudo or glexec without root: the site gives the account write access
        os.chmod(dirs.root, 0o711)
        for path in (dirs.payload, dirs.cred_dir):
            # Directories only: the inputs stay the pilot's (readable; some are hard links into a node cache)
            for root, subdirs, _files in os.walk(path):
                for name in subdirs:
                    os.chown(os.path.join(root, name), account.uid, account.gid, follow_symlinks=False)
            os.chown(path, account.uid, account.gid)
            os.chmod(path, 0o700 if path == dirs.cred_dir else 0o755)

    def pass_credentials(self, dirs: JobDir, env: dict[str, str], account: Account) -> dict[str, str]:
        """Credential files the queue gives production payloads (`payload_credentials`): copies the
        account can read, in its credentials dir; the pilot's own files stay unreadable to it."""
        env = dict(env)
        for var in ("X509_USER_PROXY", "BEARER_TOKEN_FILE"):
            if var in env and os.path.isfile(env[var]):
                copy = dirs.cred_dir / var.lower()
                copy_for(Path(env[var]), copy, account)
                env[var] = str(copy)
        return env

    def write_wrapper(self, dirs: JobDir, env: dict[str, str], proxy_target: Optional[Path]) -> Path:
        """The wrapper, a new file in the pilot's part, readable (not writable) by the payload; beside it
        the empty status file, the pilot's alone."""
        status = shlex.quote(str(dirs.wrapper_status))
        lines = [
            "#!/bin/bash",
            "# Starts a PanDA payload under its user's account (written by the pilot).",
            f'if [ "$(id -u)" = {os.getuid()} ]; then',
            '    echo "payload wrapper: running as the pilot\'s account: refused" >&2',
            f"    echo {REFUSED.decode()} > {status}; exit {WRAPPER_REFUSED}",
            "fi",
            "unset LD_PRELOAD LD_LIBRARY_PATH",
            "for v in $(compgen -e); do case $v in PATH) ;; *) unset \"$v\" ;; esac; done",
        ]
        lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())
                  if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key) and key not in ("HOME", "USER", "LOGNAME")]
        lines += [
            'USER=$(id -un); LOGNAME=$USER; HOME=$(getent passwd "$USER" | cut -d: -f6)',
            "export USER LOGNAME HOME",
        ]
        if proxy_target is not None:
            lines.append(f"export X509_USER_PROXY={shlex.quote(str(proxy_target))}")
        lines += [
            "umask 022",
            f"cd {shlex.quote(str(dirs.payload))} || exit 1",
            f"export TMPDIR={shlex.quote(str(dirs.tmp))}",
            'mkdir -p "$TMPDIR" && chmod 700 "$TMPDIR" || exit 1',
            'exec "$@"',
        ]
        try:
            os.close(os.open(dirs.wrapper_status, CREATE_NEW, 0o600))
            fd = os.open(dirs.wrapper, CREATE_NEW, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as exc:
            raise PilotError(ErrorCode.SETUP_FAILURE, f"cannot write the payload wrapper: {exc.strerror}") from None
        return dirs.wrapper

    def exit_error(self, code: Optional[int], dirs: JobDir) -> Optional[PilotError]:
        try:
            status = read_capped(dirs.wrapper_status, 64)
        except OSError:
            status = b""
        if status.strip() == REFUSED:
            return PilotError(ErrorCode.GLEXEC, "the payload wrapper found itself under the pilot's account: "
                                                "the identity switch did not happen; the payload did not run")
        return None


def launcher_env(env: dict[str, str]) -> dict[str, str]:
    """What the switching command itself sees: a PATH; the payload's environment comes from the wrapper."""
    return {"PATH": env.get("PATH", "/usr/bin:/bin")}
