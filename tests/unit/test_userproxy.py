"""The user's proxy as a PanDA server hands it over, on a mocked server (responses) in both dialects:
asked for with getProxyKey (`get_proxy_key` in the v1 API) by the queues that switch identity, taken from
the job (`userProxy`), or fetched by the queue's retrieval command with what the server's answer names
(`credname`, `myproxy`: the answer of panda-server 1.0 and 0.8). The real server is asked in
tests/integration/test_tenant_panda.py; the payload's side of it is in tests/e2e/test_tenant.py."""

from __future__ import annotations

import json
import shlex
import stat
import sys
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import responses

from pilot.config import QueueConfig
from pilot.dispatcher.base import JobRequest
from pilot.dispatcher.panda import PandaConfig, PandaDispatcher
from pilot.errors import ErrorCode, PilotError
from pilot.identity import needs_user_proxy
from pilot.job import parse_job
from pilot.layout import JobDir
from pilot.userproxy import fetch_user_proxy

URL = "https://panda.example:25443"
GET = {"v1": URL + "/api/v1/pilot/acquire_jobs", "legacy": URL + "/server/panda/getJob"}
PEM = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"
JOB = {"StatusCode": 0, "PandaID": 7, "transformation": "/bin/true", "outFiles": "7.log.tgz",
       "logFile": "7.log.tgz", "prodUserID": "/DC=org/CN=Alice"}


def ask(api: str, queue: QueueConfig, reply_job: dict) -> tuple[dict, dict]:
    """One job request to a mocked server: (the fields sent, the job the dispatcher returns)."""
    with responses.RequestsMock() as mock:
        reply = {"success": True, "message": "", "data": {"StatusCode": 0, "jobs": [reply_job]}}
        mock.post(GET[api], json=reply if api == "v1" else reply_job)
        raw = PandaDispatcher(PandaConfig(url=URL, api=api)).get_job(
            JobRequest("SITE", "wn01", get_proxy_key=needs_user_proxy(queue)))
        body = mock.calls[0].request.body
        sent = json.loads(body) if api == "v1" else dict(parse_qsl(body))
    return sent, raw


@pytest.mark.parametrize("api, field", [("v1", "get_proxy_key"), ("legacy", "getProxyKey")])
def test_a_uid_queue_asks_for_the_users_proxy_and_keeps_the_one_the_reply_brings(api, field, tmp_path):
    queue = QueueConfig(identity="uid", get_proxy_key=True)
    sent, raw = ask(api, queue, {**JOB, "userProxy": PEM})
    assert sent[field] == "True"
    dirs = JobDir(tmp_path)
    path = fetch_user_proxy(parse_job(raw), queue, dirs)
    assert path is not None and path.read_text() == PEM
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(dirs.proxy_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("api, field", [("v1", "get_proxy_key"), ("legacy", "getProxyKey")])
def test_only_queues_that_hand_the_user_proxy_over_ask_for_it(api, field):
    for queue in (QueueConfig(), QueueConfig(identity="uid")):
        sent, _ = ask(api, queue, JOB)
        assert field not in sent
    sent, _ = ask(api, QueueConfig(identity="glexec"), JOB)
    assert sent[field] == "True"


def retrieval(tmp_path: Path, code: int = 0, printed: str = PEM) -> str:
    """A retrieval command that records what it was told and prints `printed` (or fails with `code`)."""
    script = (f"import os, sys; open({str(tmp_path / 'told')!r}, 'w').write(repr(sorted("
              f"(k, v) for k, v in os.environ.items() if k.startswith('PANDA_')))); "
              f"sys.stdout.write({printed!r}); sys.exit({code})")
    return shlex.join([sys.executable, "-c", script])


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_a_myproxy_credential_the_reply_names_is_fetched_by_the_retrieval_command(api, tmp_path):
    queue = QueueConfig(identity="uid", get_proxy_key=True, user_proxy_command=retrieval(tmp_path))
    _, raw = ask(api, queue, {**JOB, "credname": "c0ffee-42", "myproxy": "myproxy.example.org"})
    path = fetch_user_proxy(parse_job(raw), queue, JobDir(tmp_path))
    assert path is not None and path.read_text() == PEM
    told = (tmp_path / "told").read_text()
    assert told == repr([("PANDA_CREDNAME", "c0ffee-42"), ("PANDA_MYPROXY", "myproxy.example.org"),
                         ("PANDA_USER_DN", "/DC=org/CN=Alice")])


@pytest.mark.parametrize("code, printed, diag", [(3, "", "exited with code 3"), (0, "not a proxy", "not a PEM")])
def test_a_failing_retrieval_or_no_pem_is_a_missing_proxy(code, printed, diag, tmp_path):
    queue = QueueConfig(identity="uid", user_proxy_command=retrieval(tmp_path, code, printed))
    dirs = JobDir(tmp_path)
    with pytest.raises(PilotError) as info:
        fetch_user_proxy(parse_job({k: str(v) for k, v in JOB.items()}), queue, dirs)
    assert info.value.code == ErrorCode.NO_PROXY and diag in info.value.diag
    assert not dirs.proxy_dir.exists()
