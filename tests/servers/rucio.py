"""A real Rucio server (PyPI rucio 41.5.1) on loopback, and the client settings to talk to it.

Two venvs from .ci/provision-storage.sh: the server's (rucio + gunicorn) and the client's (rucio-clients),
since both wheels ship the same `rucio` import package. The server keeps its catalogue in SQLite and
serves plain http on 127.0.0.1 with one gunicorn worker; the `traces` endpoint is enabled and traces are
stored as JSON lines in `<base>/log/trace/trace`. Two RSEs: LOCAL_DISK (file://, a directory) and,
when an XRootD server is given, XRD_DISK (root:// on it, Rucio's xrootd protocol implementation).
gunicorn is our child, started in a session of its own, and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tests.servers.common import free_port, stop_pid, wait_for_port
from tests.servers.xrootd import XRootDServer

VERSION = "41.5.1"
CACHE = Path(os.environ.get("PANDA_CI_CACHE", "/var/cache/pandapilot-ci"))
SERVER_VENV = CACHE / f"rucio-server-{VERSION}"
CLIENT_VENV = CACHE / f"rucio-clients-{VERSION}"
ACCOUNT, IDENTITY, PASSWORD = "root", "ddmlab", "secret"
SCOPE = "tests"


def available() -> Optional[str]:
    for venv in (SERVER_VENV, CLIENT_VENV):
        if not (venv / "bin" / "python").exists():
            return f"{venv} not found: run .ci/provision-storage.sh (as root) first"
    return None


SERVER_CFG = """\
[common]
logdir = {base}/log
loglevel = WARNING
[database]
default = sqlite:///{base}/rucio.db
[bootstrap]
userpass_identity = {identity}
userpass_pwd = {password}
[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash
[cache]
url = 127.0.0.1:1
[api]
endpoints_add = traces
[trace]
tracedir = {base}/log/trace
brokers =
port = 61013
topic = /topic/rucio.tracer
username = none
password = none
[alembic]
cfg = {base}/etc/alembic.ini
"""

ALEMBIC_INI = """\
[alembic]
script_location = {repo}
sqlalchemy.url = sqlite:///{base}/rucio.db
[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARNING
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %(levelname)s %(message)s
"""

CLIENT_CFG = """\
[client]
rucio_host = http://127.0.0.1:{port}
auth_host = http://127.0.0.1:{port}
auth_type = userpass
username = {identity}
password = {password}
account = {account}
auth_token_file_path = {base}/tokens/auth_token_{account}
"""

# Run by the client venv's python: scope, RSEs with their protocols, quota (an upload adds a rule).
SETUP = """\
import json, sys
from rucio.client import Client
rses = json.loads(sys.argv[1])
c = Client()
c.add_scope('root', sys.argv[2])
for name, proto in rses.items():
    c.add_rse(name)
    proto['domains'] = {d: {'read': 1, 'write': 1, 'delete': 1, 'third_party_copy_read': 1,
                            'third_party_copy_write': 1} for d in ('lan', 'wan')}
    c.add_protocol(name, proto)
    c.add_rse_attribute(name, 'istape', False)
    c.set_local_account_limit('root', name, 10**15)
"""


@dataclass
class RucioServer:
    base: Path
    port: int = 0
    process: Optional[subprocess.Popen] = field(default=None, repr=False)
    rses: dict[str, str] = field(default_factory=dict)  # name -> the storage prefix (a URL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def trace_url(self) -> str:
        return f"{self.url}/traces/"

    @property
    def client_config(self) -> Path:
        return self.base / "etc" / "client.cfg"

    @property
    def trace_file(self) -> Path:
        return self.base / "log" / "trace" / "trace"

    def traces(self) -> list[dict]:
        """The traces the server stored, oldest first."""
        try:
            lines = self.trace_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def client_env(self) -> dict[str, str]:
        """The environment a rucio client needs to talk to this server (what a site's setup script exports)."""
        env = dict(os.environ)
        env["RUCIO_CONFIG"] = str(self.client_config)
        env["PATH"] = f"{CLIENT_VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def setup_script(self) -> Path:
        """A site setup script (what `copysetup` names) that puts the rucio client on PATH."""
        script = self.base / "etc" / "rucio-setup.sh"
        script.write_text(f"export RUCIO_CONFIG={self.client_config}\nexport PATH={CLIENT_VENV / 'bin'}:$PATH\n")
        return script

    def client(self, code: str, *args: str) -> str:
        """Run Python code with the client venv against this server; returns its stdout."""
        done = subprocess.run([str(CLIENT_VENV / "bin" / "python"), "-c", code, *args], env=self.client_env(),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"rucio client call failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def start(self, xrootd: Optional[XRootDServer] = None) -> RucioServer:
        self.port = self.port or free_port()
        for sub in ("etc", "log/trace", "tokens", "rse"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        repo = self._server_python("import rucio, os; print(os.path.dirname(rucio.__file__))").strip()
        (self.base / "etc" / "rucio.cfg").write_text(
            SERVER_CFG.format(base=self.base, identity=IDENTITY, password=PASSWORD))
        (self.base / "etc" / "alembic.ini").write_text(
            ALEMBIC_INI.format(repo=f"{repo}/db/sqla/migrate_repo", base=self.base))
        self.client_config.write_text(CLIENT_CFG.format(port=self.port, identity=IDENTITY, password=PASSWORD,
                                                        account=ACCOUNT, base=self.base))
        self._server_python("from rucio.db.sqla.util import build_database, create_base_vo, create_root_account\n"
                            "build_database(); create_base_vo(); create_root_account()")
        argv = [str(SERVER_VENV / "bin" / "gunicorn"), "-b", f"127.0.0.1:{self.port}", "-w", "1", "--threads", "4",
                "--no-control-socket", "--error-logfile", str(self.base / "log" / "gunicorn.log"),
                "rucio.web.rest.flaskapi.v1.main:application"]
        self.process = subprocess.Popen(argv, env=self._server_env(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, cwd=self.base)
        try:
            wait_for_port(self.port, lambda: self.process is not None and self.process.poll() is None,
                          f"rucio server (log {self.base / 'log'})")
            with urllib.request.urlopen(f"{self.url}/ping", timeout=30) as reply:  # noqa: S310 - loopback
                json.loads(reply.read())
            self._add_rses(xrootd)
        except Exception:
            self.stop()
            raise
        return self

    def _add_rses(self, xrootd: Optional[XRootDServer]) -> None:
        local = self.base / "rse" / "LOCAL_DISK"
        local.mkdir(mode=0o1777)
        local.chmod(0o1777)
        protocols = {"LOCAL_DISK": {"scheme": "file", "hostname": "localhost", "port": 0, "prefix": f"{local}/",
                                    "impl": "rucio.rse.protocols.posix.Default"}}
        self.rses["LOCAL_DISK"] = f"file://{local}/"
        if xrootd is not None:
            xrd = xrootd.data / "rucio"
            xrd.mkdir(exist_ok=True)
            xrootd.chown(xrd)
            protocols["XRD_DISK"] = {"scheme": "root", "hostname": "127.0.0.1", "port": xrootd.port,
                                     "prefix": f"/{xrd}/", "impl": "rucio.rse.protocols.xrootd.Default"}
            self.rses["XRD_DISK"] = f"root://127.0.0.1:{xrootd.port}/{xrd}/"
        self.client(SETUP, json.dumps(protocols), SCOPE)

    def _server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RUCIO_CONFIG"] = str(self.base / "etc" / "rucio.cfg")
        env.pop("RUCIO_HOME", None)
        return env

    def _server_python(self, code: str) -> str:
        done = subprocess.run([str(SERVER_VENV / "bin" / "python"), "-c", code], env=self._server_env(),
                              capture_output=True, text=True, timeout=300, cwd=self.base)
        if done.returncode != 0:
            raise RuntimeError(f"rucio server set-up failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def stop(self) -> None:
        if self.process is not None:
            # SIGQUIT: gunicorn's quick shutdown; a worker still busy after 3 s goes with its group
            stop_pid(self.process.pid, grace=3.0, first=signal.SIGQUIT, group=True)
            self.process.wait(timeout=10)


def launch(xrootd: Optional[XRootDServer] = None, base: Optional[Path] = None) -> RucioServer:
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="pilot-rucio-"))
        base.chmod(0o755)
    return RucioServer(base).start(xrootd)


if __name__ == "__main__":  # start both by hand: python -m tests.servers.rucio
    from tests.servers import xrootd as xrd_module

    xrd = xrd_module.launch()
    server = launch(xrd)
    print(f"rucio {server.url} base {server.base}; xrootd {xrd.port}/{xrd.http_port}; Ctrl-C stops", file=sys.stderr)
    try:
        server.process.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        xrd.stop()
