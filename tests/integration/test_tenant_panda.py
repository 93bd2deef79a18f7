"""A `uid` queue against the real panda-server (both dialects): the pilot asks for the user's proxy with
each job (getProxyKey, `get_proxy_key` in v1), and the server, which trusts the pilot's DN as production,
answers with the MyProxy fields of its proxy key (`credname`, `myproxy`: empty in panda-server 1.0.4 and
0.8.1, which no longer keep proxy keys, never a `userProxy`); the queue's retrieval command then fetches the
proxy, and the payload runs under the account its DN maps to, with that proxy alone. Needs root (a test
account, setpriv)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilot.errors import ExitCode
from tests.accounts import made_accounts, make_proxy, passable_dir
from tests.integration.pandaserver import PandaServer
from tests.integration.test_pilot_panda import SCOPE, PilotSite

USER_DN = "/DC=org/DC=pandapilot-test/CN=Server Tenant"


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A site root the payload's account can traverse."""
    with passable_dir("pandapilot-tenant-panda-", 0o755) as root:
        yield root


def test_a_uid_queue_asks_the_server_for_the_users_proxy_and_retrieves_it(panda_server: PandaServer,
                                                                           open_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("uid switching needs root (a test account, setpriv)")
    site = PilotSite(open_root, panda_server)
    store = open_root / "store"
    store.mkdir(mode=0o700)
    (store / "user.pem").write_text(make_proxy(USER_DN))
    (store / "retrieve.sh").write_text(f'env | grep ^PANDA_ | sort > {store}/told; cat {store}/user.pem\n')
    with made_accounts("s") as made:
        (name, account), = made.items()
        (open_root / "grid-mapfile").write_text(f'"{USER_DN}" {name}\n')
        with site.queue.open("a") as queue:
            queue.write(f"identity: uid\ngrid_mapfile: {open_root / 'grid-mapfile'}\nget_proxy_key: true\n"
                        f"user_proxy_command: /bin/sh {store / 'retrieve.sh'}\n")
        out = f"tenant-{os.getpid()}.txt"
        panda_id = panda_server.insert_job(outputs=[out], job_pars=(
            f"-c 'id -u > {out}; openssl x509 -in $X509_USER_PROXY -noout -subject -nameopt compat >> {out}'"))
        result = site.run("--keep-workdirs")
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    panda_server.run_adder()
    assert site.server_state(panda_id) == "finished", result.stderr[-3000:]
    uid, subject = (site.se / "prod" / SCOPE / out).read_text().splitlines()
    assert int(uid) == account.pw_uid and USER_DN in subject
    (job_dir,) = (open_root / "work").glob(f"PanDA_Pilot-{panda_id}-*")
    definition = json.loads((job_dir / "jobdef.json").read_text())
    assert definition["credname"] == definition["myproxy"] == "", "the server answered getProxyKey"
    assert "userProxy" not in definition
    assert (store / "told").read_text() == f"PANDA_USER_DN={panda_server.client_dn}\n"
    assert not (job_dir / "proxy").exists() and not (job_dir / "cred").exists()
