"""A real XRootD server on loopback (Debian xrootd-server), with its HTTP plugin (XrdHttp) for davs://.

XRootD refuses to run as root: as root it is started with `-R nobody` and its export and admin
directories belong to that account.

Loopback only: XRootD 5 cannot bind a listening socket to one address. Every listener (the root://
port and each `xrd.protocol` port) is opened by `XrdNet::Bind`, which calls `XrdNetSocket::Open(0, port)`:
no host, so the address is INADDR_ANY / in6addr_any (xrootd 5.5.3, Debian 12, and its current master
alike). No directive or option changes that: `xrd.network` sets DNS, keep-alive and routing of
the addresses the server advertises, `xrd.port ... if <host>` is a conditional (which host's
configuration this line is), and `-I v4|v6` picks the address family of the wildcard. What restricts
the server instead is `xrd.allow host localhost`: a connection from any peer address but loopback's is
closed at accept, before the protocol starts (tests/storage/test_real_movers.py reaches the server at
this machine's other address and is refused). Checksums are
adler32, computed by the server. The HTTP port speaks TLS with a throw-away CA's certificate for
127.0.0.1 (`ca_dir`: the hashed CA directory a client names in X509_CERT_DIR). Started in the foreground
as our child; stopped by that PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tests.servers.common import free_port, stop_pid, wait_for_port

RUN_AS = "nobody"


def available() -> Optional[str]:
    """None when the server can run here, else why not."""
    for tool in ("xrootd", "xrdcp", "xrdfs"):
        if shutil.which(tool) is None:
            return f"{tool} not found: run .ci/provision-storage.sh (as root) first"
    return None


@dataclass
class XRootDServer:
    base: Path  # holds data/ (the export), adm/, the config and the log
    port: int = 0
    http_port: int = 0
    process: Optional[subprocess.Popen] = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "adm" / "xrootd.log"

    def root_url(self, path: Path | str) -> str:
        """root://127.0.0.1:PORT//abs/path for a path under the export."""
        return f"root://127.0.0.1:{self.port}/{Path(path)}"

    def davs_url(self, path: Path | str) -> str:
        return f"davs://127.0.0.1:{self.http_port}{Path(path)}"

    @property
    def ca_dir(self) -> Path:
        return self.base / "ca"

    def _certificates(self) -> tuple[Path, Path]:
        """The server's certificate and key (readable by its account), and the hashed CA directory."""
        from tests.integration.pandaserver.certs import make_certs

        certs = make_certs(self.base / "certs")
        self.ca_dir.mkdir(exist_ok=True)
        shutil.copy(certs.ca_cert, self.ca_dir / "ca.pem")
        subprocess.run(["openssl", "rehash", str(self.ca_dir)], check=True, capture_output=True, timeout=60)
        for path in (self.base / "certs", certs.server_cert, certs.server_key):
            self.chown(path)
        return certs.server_cert, certs.server_key

    def chown(self, path: Path) -> None:
        """Give a path under the export to the server's account (so it may write there)."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> XRootDServer:
        self.port = self.port or free_port()
        self.http_port = self.http_port or free_port()
        for sub in ("data", "adm"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
            self.chown(self.base / sub)
        cert, key = self._certificates()
        config = self.base / "xrootd.cfg"
        config.write_text(
            f"xrd.port {self.port}\n"
            "xrd.network nodnr\n"
            "xrd.allow host localhost\n"
            f"all.export {self.data}\n"
            f"all.adminpath {self.base / 'adm'}\n"
            f"all.pidpath {self.base / 'adm'}\n"
            "xrootd.chksum adler32\n"
            f"xrd.tls {cert} {key}\n"
            f"xrd.tlsca certdir {self.ca_dir}\n"
            f"xrd.protocol XrdHttp:{self.http_port} libXrdHttp.so\n"
        )
        argv = ["xrootd", "-c", str(config), "-l", str(self.log)]
        if os.geteuid() == 0:
            argv[1:1] = ["-R", RUN_AS]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for port in (self.port, self.http_port):
                wait_for_port(port, self.running, f"xrootd (log {self.log})")
        except RuntimeError:
            self.stop()
            raise
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid)
            self.process.wait(timeout=10)

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def launch(base: Optional[Path] = None) -> XRootDServer:
    """A fresh server in its own directory (readable by the server's account)."""
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="pilot-xrootd-"))
        base.chmod(0o755)
    return XRootDServer(base).start()

