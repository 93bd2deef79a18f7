"""Test accounts for switched identities (root only): named after this test session, as several sessions may
run on one machine at once. tests/conftest.py's session fixture `accounts` makes them and removes them."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from collections.abc import Iterator

import psutil

ONE, TWO = f"pt{os.getpid()}a", f"pt{os.getpid()}b"
USERS = (ONE, TWO)
DN = {ONE: "/DC=org/DC=pandapilot-test/CN=Tenant One", TWO: "/DC=org/DC=pandapilot-test/CN=Tenant Two"}


def made_accounts() -> Iterator[dict[str, pwd.struct_passwd]]:
    """Make the accounts (after removing those of test sessions killed before their teardown), yield them,
    then end their processes and remove them."""
    for entry in pwd.getpwall():
        session = re.fullmatch(r"pt(\d+)[ab]", entry.pw_name)
        if session and not psutil.pid_exists(int(session.group(1))):
            _account_tool(["userdel", entry.pw_name])
    for name in USERS:
        _account_tool(["useradd", "--no-create-home", "--home-dir", f"/home/{name}", "--shell", "/bin/bash",
                       "--user-group", name])
    yield {name: pwd.getpwnam(name) for name in USERS}
    for name in USERS:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)  # only this session's accounts
        _account_tool(["userdel", name])


def _account_tool(argv: list[str]) -> None:
    """useradd / userdel, waiting for /etc/passwd's lock while another session holds it."""
    for _ in range(60):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode == 0 or "lock" not in done.stderr:
            break
        time.sleep(0.5)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
