"""Test accounts and user proxies for the payload-isolation tests (tests/e2e/test_tenant.py and the
integration tests that switch identity). Accounts are named `pt<pid of this test session><letter>`, so
that several sessions may run on one machine; a session's accounts are removed at its end, and those of
a session that was killed before its teardown by the next one."""

from __future__ import annotations

import datetime
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def account_name(letter: str) -> str:
    return f"pt{os.getpid()}{letter}"


@contextmanager
def made_accounts(*letters: str) -> Iterator[dict[str, pwd.struct_passwd]]:
    """Accounts of this session (root only), removed at the end with whatever of them still runs."""
    for entry in pwd.getpwall():  # accounts of test sessions that were killed before their teardown
        session = re.fullmatch(r"pt(\d+)[a-z]", entry.pw_name)
        if session and not psutil.pid_exists(int(session.group(1))):
            account_tool(["userdel", entry.pw_name])
    names = [account_name(letter) for letter in letters]
    for name in names:
        account_tool(["useradd", "--no-create-home", "--home-dir", f"/home/{name}", "--shell", "/bin/bash",
                      "--user-group", name])
    try:
        yield {name: pwd.getpwnam(name) for name in names}
    finally:
        for name in names:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)  # only this session's accounts
            account_tool(["userdel", name])


def account_tool(argv: list[str]) -> None:
    """useradd / userdel, waiting for /etc/passwd's lock while another session holds it."""
    for _ in range(60):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode == 0 or "lock" not in done.stderr:
            break
        time.sleep(0.5)
    assert done.returncode == 0, f"{argv}: {done.stderr}"


def make_proxy(dn: str, expired: bool = False) -> str:
    """An X.509 proxy (certificate and key in one PEM) for `dn`, with an RFC 3820 proxy CN."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    oids = {"DC": NameOID.DOMAIN_COMPONENT, "CN": NameOID.COMMON_NAME}
    parts = [part.split("=", 1) for part in dn.strip("/").split("/")] + [["CN", "2718281828"]]
    name = x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts])
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - datetime.timedelta(days=2), now - datetime.timedelta(days=1)) if expired else \
        (now - datetime.timedelta(minutes=5), now + datetime.timedelta(hours=12))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return (cert.public_bytes(serialization.Encoding.PEM) + key_pem).decode()


@contextmanager
def passable_dir(prefix: str, mode: int = 0o711) -> Iterator[Path]:
    """A directory other accounts can pass through (pytest's own temporary dirs are 0700), removed after."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, mode)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
