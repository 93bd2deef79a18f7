"""The user's proxy in switched modes: where it comes from, where it is kept, whose DN it carries.

It comes from the job (`userProxy`: what a dispatcher asked with `getProxyKey` brings), else from the
queue's `user_proxy_command`, a site command that prints it (for a server that answers `getProxyKey`
with a MyProxy server and a credential name, the command gets them to fetch it). The pilot keeps its
copy 0600 in a 0700 directory of its own part of the job dir; the payload gets a copy of its account's,
in the credentials dir; both go when the job ends (`Launcher.cleanup`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Optional

from pilot.accounts import Account
from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.job import Job
from pilot.layout import JobDir

MAX_PROXY = 64 * 1024
PROXY_NAME = "x509up"
RETRIEVAL_TIMEOUT = 120
ABSENT = ("", "NULL", "None")
# What the retrieval command is told: the user's DN, and what a server's getProxyKey answer names.
RETRIEVAL_ENV = {"PANDA_USER_DN": "prodUserID", "PANDA_CREDNAME": "credname", "PANDA_MYPROXY": "myproxy"}


def proxy_identity(path: Path) -> str:
    """The user's DN from a proxy file (the proxy's own CN components dropped); NO_PROXY when it is not a
    certificate, or expires within a minute."""
    argv = ["openssl", "x509", "-in", str(path), "-noout", "-subject", "-nameopt", "compat"]
    try:
        shown = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        fresh = subprocess.run([*argv[:4], "-noout", "-checkend", "60"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PilotError(ErrorCode.NO_PROXY, f"cannot read the user proxy: {exc}") from None
    if shown.returncode != 0 or not shown.stdout.startswith("subject="):
        raise PilotError(ErrorCode.NO_PROXY, "the user proxy is not a valid X.509 certificate")
    if fresh.returncode != 0:
        raise PilotError(ErrorCode.NO_PROXY, "the user proxy has expired")
    return user_dn(shown.stdout.strip()[len("subject="):].strip())


def user_dn(subject: str) -> str:
    """A proxy's subject without the proxy CNs (RFC 3820 numbers, 'proxy', 'limited proxy')."""
    while True:
        head, sep, last = subject.rpartition("/CN=")
        if sep and head and (last.isdigit() or last in ("proxy", "limited proxy")):
            subject = head
        else:
            return subject


def store_user_proxy(dirs: JobDir, pem: bytes) -> Path:
    """The user's proxy as the pilot received it: 0600 in a 0700 directory of the pilot's, a new file."""
    dirs.proxy_dir.mkdir(mode=0o700)
    os.chmod(dirs.proxy_dir, 0o700)
    path = dirs.proxy_dir / PROXY_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return path


def fetch_user_proxy(job: Job, queue: QueueConfig, dirs: JobDir) -> Optional[Path]:
    """The user's proxy, stored: from the job (`userProxy`), else from the queue's `user_proxy_command`.
    None when there is neither."""
    pem = job.raw.get("userProxy", "")
    if pem in ABSENT and queue.user_proxy_command:
        pem = retrieve(queue.user_proxy_command, job)
    if pem in ABSENT:
        return None
    if len(pem) > MAX_PROXY or "-----BEGIN CERTIFICATE-----" not in pem:
        raise PilotError(ErrorCode.NO_PROXY, "the user proxy the job brought is not a PEM certificate")
    return store_user_proxy(dirs, pem.encode("ascii", "replace"))


def retrieve(command: str, job: Job) -> str:
    """The proxy `command` prints (an argv, no shell); the user's DN, and the credential name and MyProxy
    server of the server's getProxyKey answer, in its environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({var: job.raw.get(key, "") for var, key in RETRIEVAL_ENV.items() if job.raw.get(key, "") not in ABSENT})
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, timeout=RETRIEVAL_TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise PilotError(ErrorCode.NO_PROXY, f"user_proxy_command failed: {exc}") from None
    if done.returncode != 0:
        raise PilotError(ErrorCode.NO_PROXY, f"user_proxy_command exited with code {done.returncode}")
    return done.stdout.decode("ascii", "replace")


def copy_for(source: Path, target: Path, account: Account) -> None:
    """A credential for the payload: a new 0600 file of the account, in its 0700 directory."""
    data = source.read_bytes()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if os.geteuid() == 0:
            os.fchown(fd, account.uid, account.gid)
    finally:
        os.close(fd)
