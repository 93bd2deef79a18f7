"""Who the payload runs as, and the launcher that makes it so.

The queue's `identity` setting picks a Launcher:
- `none`: the payload runs as the pilot's own account (its environment is still clean of the pilot's
  credentials unless the queue names some for production jobs).
- `uid`: the pilot maps the user's DN (from the user's proxy, else the job's prodUserID) to a local
  account through a grid-mapfile and switches to it: directly when it runs as root (setpriv), or through a
  configured command (`uid_command`, e.g. `sudo -n -u {user}`).
- `glexec`: the glexec binary maps the user's proxy to an account and switches; the payload runs as
  `glexec /bin/bash <wrapper> <payload argv...>`.
The queue's `sandbox: bubblewrap` wraps any of them in a bubblewrap sandbox that hides the pilot's files.

In switched modes the payload starts through a wrapper script the pilot writes into its own part of the
work dir: it re-exports a clean environment (nothing of the pilot's credentials, the target's HOME, USER
and LOGNAME, no LD_PRELOAD), makes a private temp dir, sets the umask, refuses to run as the pilot's
account, and execs the payload's argv (passed as positional parameters, never through a shell string).
Whatever goes wrong before the payload starts fails the job with its code; the payload never runs as the
pilot instead.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.fsutil import read_capped
from pilot.job import Job
from pilot.layout import JobDir

log = logging.getLogger(__name__)

ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
MAX_PROXY = 64 * 1024
MAX_MAPFILE = 16 * 2**20
PROXY_NAME = "x509up"
WRAPPER_REFUSED = 200  # the wrapper's exit code when it finds itself running as the pilot's account
# The pilot's own secrets: never in a user's payload environment (production jobs get what the queue names).
PILOT_SECRETS = ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "BEARER_TOKEN", "BEARER_TOKEN_FILE",
                 "PANDA_AUTH_TOKEN", "PANDA_AUTH_ORIGIN", "OIDC_AUTH_TOKEN", "LD_PRELOAD", "LD_LIBRARY_PATH")
GLEXEC_CODES = {  # glexec's own exit codes (since glexec 0.6)
    201: "client error (no or unreadable user proxy, bad proxy permissions, target proxy location not "
         "accessible, or the command cannot be executed)",
    202: "system error (glexec's configuration or LCAS/LCMAPS initialisation)",
    203: "authorization error (the user's DN is not allowed or not mapped to an account)",
}
GLEXEC_OVERLAP = 204  # the payload itself exited 201-204


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def named(cls, name: str) -> Account:
        if not ACCOUNT_NAME.match(name):
            raise PilotError(ErrorCode.GLEXEC, f"not an account name: {name!r}")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise PilotError(ErrorCode.GLEXEC, f"account {name} does not exist on this node") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


# --- the user's proxy -----------------------------------------------------------------------------
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
    """The user's proxy: from the job (`userProxy`, what getProxyKey brings), else from the queue's
    `user_proxy_command` (its stdout; the user's DN in $PANDA_USER_DN). None when there is neither."""
    pem = job.raw.get("userProxy", "")
    if pem in ("", "NULL", "None") and queue.user_proxy_command:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PANDA_USER_DN": job.raw.get("prodUserID", "")}
        try:
            done = subprocess.run(shlex.split(queue.user_proxy_command), capture_output=True, timeout=120, env=env)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise PilotError(ErrorCode.NO_PROXY, f"user_proxy_command failed: {exc}") from None
        if done.returncode != 0:
            raise PilotError(ErrorCode.NO_PROXY, f"user_proxy_command exited with code {done.returncode}")
        pem = done.stdout.decode("ascii", "replace")
    if pem in ("", "NULL", "None"):
        return None
    if len(pem) > MAX_PROXY or "-----BEGIN CERTIFICATE-----" not in pem:
        raise PilotError(ErrorCode.NO_PROXY, "the user proxy the job brought is not a PEM certificate")
    return store_user_proxy(dirs, pem.encode("ascii", "replace"))


# --- DN -> account ----------------------------------------------------------------------------------
@dataclass
class GridMap:
    """grid-mapfile lines: `"DN" account`, where DN may hold `*` wildcards and an account `.prefix` is a
    pool (the accounts prefix001, prefix002, ...; a DN always gets the same one of them)."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> GridMap:
        try:
            text = read_capped(path, MAX_MAPFILE).decode("utf-8", "replace")
        except OSError as exc:
            raise PilotError(ErrorCode.GLEXEC, f"grid-mapfile {path} unreadable: {exc.strerror}") from None
        entries = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            if len(words) >= 2:
                entries.append((words[0], words[1].split(",")[0]))
        return cls(entries)

    def account(self, dn: str) -> Account:
        for pattern, target in self.entries:
            if pattern == dn or (("*" in pattern or "?" in pattern) and fnmatch.fnmatchcase(dn, pattern)):
                return pool_member(target[1:], dn) if target.startswith(".") else Account.named(target)
        raise PilotError(ErrorCode.GLEXEC, f"the user's DN is not mapped to a local account: {dn}")


def pool_member(prefix: str, dn: str) -> Account:
    members = sorted(p.pw_name for p in pwd.getpwall()
                     if p.pw_name.startswith(prefix) and p.pw_name[len(prefix):].isdigit())
    if not members:
        raise PilotError(ErrorCode.GLEXEC, f"pool .{prefix} has no accounts on this node")
    pick = int(hashlib.sha256(dn.encode()).hexdigest(), 16) % len(members)
    return Account.named(members[pick])


# --- what a launcher gives the payload runner --------------------------------------------------------
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

    def exit_error(self, code: Optional[int]) -> Optional[PilotError]:
        """A failure of the launcher itself, told by the exit code; None when the code is the payload's."""
        return None

    def cleanup(self, dirs: JobDir) -> None:
        """After the payload: no copy of the user's proxy, no wrapper is left, whatever happened."""
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
                _copy_as(Path(env[var]), copy, account)
                env[var] = str(copy)
        return env

    def write_wrapper(self, dirs: JobDir, env: dict[str, str], proxy_target: Optional[Path]) -> Path:
        """The wrapper, a new file in the pilot's part, readable (not writable) by the payload."""
        lines = [
            "#!/bin/bash",
            "# Starts a PanDA payload under its user's account (written by the pilot).",
            f'if [ "$(id -u)" = {os.getuid()} ]; then',
            f'    echo "payload wrapper: running as the pilot\'s account: refused" >&2; exit {WRAPPER_REFUSED}',
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
            fd = os.open(dirs.wrapper, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as exc:
            raise PilotError(ErrorCode.SETUP_FAILURE, f"cannot write the payload wrapper: {exc.strerror}") from None
        return dirs.wrapper

    def exit_error(self, code: Optional[int]) -> Optional[PilotError]:
        if code == WRAPPER_REFUSED:
            return PilotError(ErrorCode.GLEXEC, "the payload wrapper found itself under the pilot's account")
        return None


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
            _copy_as(proxy, target, account)
        wrapper = self.write_wrapper(dirs, self.pass_credentials(dirs, env, account), target)
        if self.queue.uid_command:
            switch = [word.replace("{user}", account.name) for word in shlex.split(self.queue.uid_command)]
        elif os.geteuid() == 0:
            switch = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups",
                      "--inh-caps=-all", "--"]
        else:
            raise PilotError(ErrorCode.GLEXEC, "identity uid needs root or a uid_command (setpriv, sudo -n -u {user})")
        log.info("payload runs as %s (uid %d)", account.name, account.uid)
        return Launch([*switch, "/bin/bash", str(wrapper), *argv], _launcher_env(env), account)


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
        error = self.exit_error(done.returncode)
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

    def exit_error(self, code: Optional[int]) -> Optional[PilotError]:
        if code in GLEXEC_CODES:
            return PilotError(ErrorCode.GLEXEC, f"glexec {code}: {GLEXEC_CODES[code]}")
        if code == GLEXEC_OVERLAP:
            return PilotError(ErrorCode.PAYLOAD_FAILED, "payload exited with a code in glexec's own range 201-204 "
                                                        "(glexec 204)")
        return super().exit_error(code)


def _copy_as(source: Path, target: Path, account: Account) -> None:
    """The user's proxy for the payload: a new 0600 file of the account, in its 0700 directory."""
    data = source.read_bytes()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if os.geteuid() == 0:
            os.fchown(fd, account.uid, account.gid)
    finally:
        os.close(fd)


def _launcher_env(env: dict[str, str]) -> dict[str, str]:
    """What the switching command itself sees: a PATH; the payload's environment comes from the wrapper."""
    return {"PATH": env.get("PATH", "/usr/bin:/bin")}


class Sandbox(Launcher):
    """bubblewrap around another launcher: the file system read-only, the pilot's work area and its
    credentials hidden, only this job's parts visible, a PID namespace of its own."""

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
        for path in (dirs.wrapper, dirs.proxy_dir, dirs.cred_dir):
            if path.exists():
                box += ["--bind" if path == dirs.cred_dir else "--ro-bind", str(path), str(path)]
        for secret in self.hidden:  # the pilot's credential files, wherever they are
            if os.path.isfile(secret):
                box += ["--ro-bind", "/dev/null", secret]
        return Launch([*box, "--", *inner.argv], inner.env, inner.account)

    def exit_error(self, code: Optional[int]) -> Optional[PilotError]:
        return self.inner.exit_error(code)

    def cleanup(self, dirs: JobDir) -> None:
        self.inner.cleanup(dirs)


LAUNCHERS: dict[str, type[Launcher]] = {"none": NoSwitch, "uid": UidSwitch, "glexec": Glexec}


def make_launcher(queue: QueueConfig, pilot_dir: Path) -> Launcher:
    """The queue's launcher (`identity`, `sandbox`); a ValueError names what is wrong."""
    kind = LAUNCHERS.get(queue.identity)
    if kind is None:
        raise ValueError(f"queue setting identity={queue.identity!r}: one of {', '.join(LAUNCHERS)}")
    launcher = kind(queue)
    if queue.sandbox in ("", "none"):
        return launcher
    if queue.sandbox != "bubblewrap":
        raise ValueError(f"queue setting sandbox={queue.sandbox!r}: bubblewrap or none")
    hidden = [os.environ[var] for var in ("X509_USER_PROXY", "BEARER_TOKEN_FILE") if os.environ.get(var)]
    return Sandbox(queue, launcher, pilot_dir, hidden)


def needs_user_proxy(queue: QueueConfig) -> bool:
    """Ask the dispatcher for the user's proxy with each job (getProxyKey): glexec queues, and uid
    queues that hand the user's proxy to the payload."""
    return queue.identity == "glexec" or (queue.identity == "uid" and queue.get_proxy_key)
