"""PandaDispatcher against a mocked PanDA server (both dialects)."""

from __future__ import annotations

import gzip
import io
import json
import logging
from urllib.parse import parse_qsl

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NewConnectionError

from pilot.dispatcher import panda
from pilot.dispatcher.base import Command, DispatcherError, FailureKind, JobRequest, JobUpdate
from pilot.dispatcher.panda import PandaConfig, PandaDispatcher
from pilot.errors import ErrorCode

URL = "https://panda.example:25443"
V1_GET = URL + "/api/v1/pilot/acquire_jobs"
V1_UPDATE = URL + "/api/v1/pilot/update_job"
V1_STATUS = URL + "/api/v1/pilot/get_job_status"
LEG_GET = URL + "/server/panda/getJob"
LEG_UPDATE = URL + "/server/panda/updateJob"
LEG_STATUS = URL + "/server/panda/getStatus"
TOKEN = "s3cr3t-t0ken-value"
JOB = {"StatusCode": 0, "PandaID": 4242, "jobPars": "-a 1", "attemptNr": 1, "coreCount": None}


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("X509_CERT_DIR", "X509_USER_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake():
    return FakeTime()


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def make(fake: FakeTime, api: str = "v1", **kw) -> PandaDispatcher:
    cfg = PandaConfig(url=URL, api=api, **kw)
    return PandaDispatcher(cfg, sleep=fake.sleep, clock=fake.clock, rand=lambda: 1.0)


def request(**kw) -> JobRequest:
    return JobRequest(site_name="SITE_A", node="wn01", **kw)


def sent_json(mock, i: int = -1) -> dict:
    return json.loads(mock.calls[i].request.body)


def sent_form(mock, i: int = -1) -> dict:
    return dict(parse_qsl(mock.calls[i].request.body))


def v1_ok(data) -> dict:
    return {"success": True, "message": "", "data": data}


def fails(kind: FailureKind, call) -> DispatcherError:
    with pytest.raises(DispatcherError) as info:
        call()
    err = info.value
    assert err.kind is kind, err.diag
    assert "\n" not in err.diag and "Traceback" not in err.diag
    return err


# --- get_job ---------------------------------------------------------------------------------


def test_v1_get_job_success_and_exact_body(mock, fake):
    mock.post(V1_GET, json=v1_ok({"StatusCode": 0, "jobs": [JOB]}))
    d = make(fake)
    job = d.get_job(request(memory=2000, cpu=2400, worker_id="17", task_id=5, get_proxy_key=True))
    assert job == {"PandaID": "4242", "jobPars": "-a 1", "attemptNr": "1", "coreCount": "NULL"}
    assert sent_json(mock) == {
        "site_name": "SITE_A", "node": "wn01", "prod_source_label": "managed", "memory": 2000,
        "n_jobs": 1, "worker_id": 17, "task_id": 5, "get_proxy_key": "True",
    }  # fmt: skip
    assert mock.calls[0].request.headers["Content-Type"] == "application/json"
    assert d.requests_sent == 1


def test_legacy_get_job_json_flat_and_exact_form(mock, fake):
    mock.post(LEG_GET, json=JOB)
    d = make(fake, api="legacy")
    job = d.get_job(
        request(memory=2000, disk_space=5000, cpu=2400, computing_element="ce1", get_proxy_key=True)
    )
    assert job is not None and job["PandaID"] == "4242" and "StatusCode" not in job
    assert sent_form(mock) == {
        "siteName": "SITE_A", "node": "wn01", "prodSourceLabel": "managed", "mem": "2000",
        "diskSpace": "5000", "cpu": "2400", "nJobs": "1", "computingElement": "ce1", "getProxyKey": "True",
    }  # fmt: skip
    assert mock.calls[0].request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_legacy_get_job_urlencoded_reply(mock, fake):
    mock.post(LEG_GET, body="StatusCode=0&PandaID=7&jobPars=-a+1+%2Db&inFiles=a%2Cb")
    job = make(fake, api="legacy").get_job(request())
    assert job == {"PandaID": "7", "jobPars": "-a 1 -b", "inFiles": "a,b"}


@pytest.mark.parametrize("jobs", [[{"PandaID": 9}], json.dumps([{"PandaID": 9}])])
def test_legacy_get_job_bulk_reply(mock, fake, jobs):
    mock.post(LEG_GET, json={"StatusCode": 0, "jobs": jobs})
    assert make(fake, api="legacy").get_job(request()) == {"PandaID": "9"}


@pytest.mark.parametrize(
    "api,url,reply",
    [
        ("v1", V1_GET, {"json": {"success": False, "message": "No jobs in PanDA", "data": None}}),
        ("v1", V1_GET, {"json": v1_ok({"StatusCode": 20})}),
        ("v1", V1_GET, {"json": v1_ok({"StatusCode": 0, "jobs": []})}),
        ("legacy", LEG_GET, {"body": "StatusCode=20"}),
        ("legacy", LEG_GET, {"json": {"StatusCode": 20, "errorDialog": "no jobs in PanDA"}}),
    ],
)
def test_no_job(mock, fake, api, url, reply):
    mock.post(url, **reply)
    assert make(fake, api=api).get_job(request()) is None


# --- auth and server failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "SSL secure connection is required",
        "no production/pilot role in VOMS FQANs or non pilot owner",
        "production or pilot role required",
    ],
)
def test_v1_auth_messages(mock, fake, message):
    mock.post(V1_GET, json={"success": False, "message": message, "data": None})
    err = fails(FailureKind.AUTH, lambda: make(fake).get_job(request()))
    assert message[:20] in err.diag and "acquire_jobs" in err.diag


@pytest.mark.parametrize("status", [40, 50, 60, 70, 80, 90])
def test_legacy_auth_statuses(mock, fake, status):
    mock.post(LEG_GET, body=f"StatusCode={status}")
    err = fails(FailureKind.AUTH, lambda: make(fake, api="legacy").get_job(request()))
    assert err.status == status and f"StatusCode={status}" in err.diag


def test_legacy_role_failure_json_carries_dialog(mock, fake):
    mock.post(LEG_GET, json={"StatusCode": 60, "errorDialog": "no production/pilot role in VOMS FQANs"})
    err = fails(FailureKind.AUTH, lambda: make(fake, api="legacy").get_job(request()))
    assert "no production/pilot role" in err.diag


@pytest.mark.parametrize("code", [401, 403])
def test_http_auth_failures(mock, fake, code):
    mock.post(V1_GET, status=code, body="ERROR : Token authentication failed. expired")
    d = make(fake)
    err = fails(FailureKind.AUTH, lambda: d.get_job(request()))
    assert err.status == code and "Token authentication failed" in err.diag and d.requests_sent == 1


def test_forbidden_method_hints_at_dialect(mock, fake):
    mock.post(LEG_GET, status=403, body="ERROR : method getJob is forbidden")
    err = fails(FailureKind.AUTH, lambda: make(fake, api="legacy").get_job(request()))
    assert "dialect" in err.diag


@pytest.mark.parametrize(
    "api,url,reply,status",
    [
        ("legacy", LEG_GET, {"body": "StatusCode=30"}, 30),
        ("legacy", LEG_GET, {"json": {"StatusCode": 10, "errorDialog": "database timeout"}}, 10),
        ("v1", V1_GET, {"json": {"success": False, "message": "Timed out", "data": None}}, None),
        ("v1", V1_GET, {"json": v1_ok({"StatusCode": 30})}, 30),
    ],
)
def test_server_failures(mock, fake, api, url, reply, status):
    mock.post(url, **reply)
    err = fails(FailureKind.SERVER, lambda: make(fake, api=api).get_job(request()))
    assert err.status == status


def test_v1_update_invalid_request_is_server_not_auth(mock, fake):
    mock.post(
        V1_UPDATE, json={"success": False, "message": "Invalid job status: bogus", "data": {"StatusCode": 50}}
    )
    err = fails(FailureKind.SERVER, lambda: make(fake).update_job(JobUpdate(1, "bogus", 1)))
    assert "Invalid job status" in err.diag and err.status == 50


def test_v1_update_failed_status_in_data(mock, fake):
    mock.post(V1_UPDATE, json=v1_ok({"StatusCode": 30, "ErrorDiag": "Failed to add meta_data"}))
    err = fails(FailureKind.SERVER, lambda: make(fake).update_job(JobUpdate(1, "running", 1)))
    assert err.status == 30 and "Failed to add meta_data" in err.diag


# --- retries --------------------------------------------------------------------------------------


def test_5xx_then_success_backs_off(mock, fake):
    mock.post(V1_GET, status=503, body="busy")
    mock.post(V1_GET, status=429, body="slow down")
    mock.post(V1_GET, json=v1_ok({"StatusCode": 0, "jobs": [JOB]}))
    d = make(fake)
    assert d.get_job(request())["PandaID"] == "4242"
    assert fake.sleeps == [2.0, 4.0] and d.requests_sent == 3


def test_backoff_grows_and_is_bounded(mock, fake):
    mock.post(V1_UPDATE, status=500, body="oops")
    d = make(fake, backoff_base=1, backoff_max=5, retry_budget=30)
    err = fails(FailureKind.TRANSPORT, lambda: d.update_job(JobUpdate(1, "running", 1)))
    assert fake.sleeps[:4] == [1, 2, 4, 5] and max(fake.sleeps) <= 5
    assert fake.sleeps[:-1] == sorted(fake.sleeps[:-1])  # the last one is cut to what the budget has left
    assert sum(fake.sleeps) == 30 and err.status == 500 and "giving up" in err.diag
    assert d.requests_sent == len(fake.sleeps) + 1


def test_full_jitter_stays_under_cap(mock, fake):
    mock.post(V1_GET, status=503)
    d = PandaDispatcher(
        PandaConfig(url=URL, retry_budget=100), sleep=fake.sleep, clock=fake.clock, rand=lambda: 0.5
    )
    fails(FailureKind.TRANSPORT, lambda: d.get_job(request()))
    assert fake.sleeps[:3] == [1.0, 2.0, 4.0]


def test_no_budget_means_one_attempt(mock, fake):
    mock.post(V1_UPDATE, status=504)
    d = make(fake, retry_budget=0)
    err = fails(FailureKind.TRANSPORT, lambda: d.update_job(JobUpdate(1, "running", 1)))
    assert d.requests_sent == 1 and fake.sleeps == [] and "HTTP 504" in err.diag


REFUSED = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "Connection refused")))


@pytest.mark.parametrize("exc", [REFUSED, requests.ConnectTimeout("connect timed out"),
                                 requests.ConnectionError("reset"), requests.ReadTimeout("read timed out")])
def test_update_connection_errors_retried_then_transport(mock, fake, exc):
    mock.post(V1_UPDATE, body=exc)
    d = make(fake, retry_budget=10)
    err = fails(FailureKind.TRANSPORT, lambda: d.update_job(JobUpdate(1, "running", 1)))
    assert d.requests_sent > 1 and type(exc).__name__ in err.diag


@pytest.mark.parametrize("exc", [REFUSED, requests.ConnectTimeout("connect timed out")])
def test_job_request_retried_while_it_never_reached_the_server(mock, fake, exc):
    mock.post(V1_GET, body=exc)
    d = make(fake, retry_budget=10)
    fails(FailureKind.TRANSPORT, lambda: d.get_job(request()))
    assert d.requests_sent > 1


@pytest.mark.parametrize("answer", [{"body": requests.ConnectionError("connection aborted")},
                                    {"body": requests.ReadTimeout("read")}, {"status": 500}, {"status": 502},
                                    {"status": 504}, {"status": 408}])
def test_job_request_not_repeated_once_the_server_may_have_answered(mock, fake, answer):
    mock.post(V1_GET, **answer)
    d = make(fake, retry_budget=10)
    err = fails(FailureKind.LOST, lambda: d.get_job(request()))
    assert d.requests_sent == 1 and fake.sleeps == [] and "not asked again" in err.diag


def test_connection_error_then_success(mock, fake):
    mock.post(LEG_UPDATE, body=requests.ConnectionError("refused"))
    mock.post(LEG_UPDATE, body="StatusCode=0&command=NULL")
    assert make(fake, api="legacy").update_job(JobUpdate(1, "running", 1)) is Command.NONE
    assert fake.sleeps == [2.0]


def test_tls_verification_failure_is_fatal(mock, fake):
    mock.post(
        V1_GET, body=requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] unable to get issuer")
    )
    d = make(fake)
    err = fails(FailureKind.AUTH, lambda: d.get_job(request()))
    assert d.requests_sent == 1 and "CERTIFICATE_VERIFY_FAILED" in err.diag and "capath" in err.diag


def test_transient_tls_error_is_retried(mock, fake):
    mock.post(V1_GET, body=requests.exceptions.SSLError("EOF occurred in violation of protocol"))
    mock.post(V1_GET, json=v1_ok({"StatusCode": 20}))
    assert make(fake).get_job(request()) is None and fake.sleeps == [2.0]


def test_missing_cert_file_is_auth(mock, fake):
    mock.post(V1_GET, body=OSError("Could not find the TLS certificate file, invalid path: /nope"))
    err = fails(FailureKind.AUTH, lambda: make(fake).get_job(request()))
    assert "/nope" in err.diag


# --- malformed replies ----------------------------------------------------------------------------

HTML = "<html><head><title>502 Proxy Error</title></head><body><h1>Proxy Error</h1></body></html>"


@pytest.mark.parametrize("api,url", [("v1", V1_GET), ("legacy", LEG_GET)])
@pytest.mark.parametrize(
    "body,expect",
    [
        (HTML, "Proxy Error"),
        ('{"success": true, "data": {"StatusCode": 0, "jo', "not valid JSON"),
        ("", "empty reply"),
        ("   ", "empty reply"),
        ('[{"PandaID": 1}]', "JSON list"),
    ],
)
def test_malformed_replies(mock, fake, api, url, body, expect):
    mock.post(url, body=body, status=200)
    err = fails(FailureKind.PROTOCOL, lambda: make(fake, api=api).get_job(request()))
    assert expect in err.diag and "HTTP 200" in err.diag and err.status == 200


@pytest.mark.parametrize(
    "api,url,reply",
    [
        ("v1", V1_GET, v1_ok({"StatusCode": 0, "jobs": [{"jobPars": "x"}]})),
        ("v1", V1_GET, v1_ok({"StatusCode": 0, "jobs": ["not a dict"]})),
        ("legacy", LEG_GET, {"StatusCode": 0, "jobPars": "x"}),
    ],
)
def test_job_without_panda_id(mock, fake, api, url, reply):
    mock.post(url, json=reply)
    err = fails(FailureKind.PROTOCOL, lambda: make(fake, api=api).get_job(request()))
    assert "PandaID" in err.diag or "not an object" in err.diag


@pytest.mark.parametrize(
    "reply,expect",
    [({"data": {}}, "no 'success'"), (v1_ok(["x"]), "not an object"), (v1_ok({"jobs": []}), "StatusCode")],
)
def test_v1_bad_envelopes(mock, fake, reply, expect):
    mock.post(V1_GET, json=reply)
    assert expect in fails(FailureKind.PROTOCOL, lambda: make(fake).get_job(request())).diag


def test_legacy_garbage_without_status(mock, fake):
    mock.post(LEG_UPDATE, body="hello world")
    err = fails(FailureKind.PROTOCOL, lambda: make(fake, api="legacy").update_job(JobUpdate(1, "running", 1)))
    assert "hello world" in err.diag


@pytest.mark.parametrize("code", [404, 302])
def test_not_found_or_redirect_hints_at_url(mock, fake, code):
    mock.post(V1_GET, status=code, body="not here", headers={"Location": "https://elsewhere/"})
    d = make(fake)
    err = fails(FailureKind.PROTOCOL, lambda: d.get_job(request()))
    assert err.status == code and "url" in err.diag and d.requests_sent == 1


# --- update_job ----------------------------------------------------------------------------------

REPORT = {"out.root": {"guid": "g-1", "fsize": 123, "adler32": "0a0b0c0d", "surl": "root://se/out.root"}}


def full_update() -> JobUpdate:
    return JobUpdate(
        job_id=4242, job_status="finished", attempt_nr=2, node="wn01", site_name="SITE_A",
        trans_exit_code=0, cpu_consumption_time=12.7, cpu_consumption_unit="s", cpu_conversion_factor=1.5,
        start_time="2024-01-01 10:00:00", job_output_report=REPORT, meta_data='{"a": 1}',
        pilot_timing="1|2|3|4|5", max_rss=1000,
    )  # fmt: skip


def test_v1_update_body(mock, fake):
    mock.post(V1_UPDATE, json=v1_ok({"StatusCode": 0, "command": "NULL"}))
    assert make(fake).update_job(full_update()) is Command.NONE
    body = sent_json(mock)
    assert body == {
        "job_id": 4242, "job_status": "finished", "attempt_nr": 2, "node": "wn01", "site_name": "SITE_A",
        "trans_exit_code": 0, "cpu_consumption_time": 12, "cpu_consumption_unit": "s",
        "cpu_conversion_factor": 1.5, "start_time": "2024-01-01 10:00:00",
        "job_output_report": json.dumps(REPORT), "meta_data": '{"a": 1}', "pilot_timing": "1|2|3|4|5",
        "max_rss": 1000,
    }  # fmt: skip
    assert json.loads(body["job_output_report"]) == REPORT


def test_legacy_update_body(mock, fake):
    mock.post(LEG_UPDATE, json={"StatusCode": 0, "command": "NULL"})
    make(fake, api="legacy").update_job(full_update())
    assert sent_form(mock) == {
        "jobId": "4242", "state": "finished", "attemptNr": "2", "node": "wn01", "siteName": "SITE_A",
        "transExitCode": "0", "cpuConsumptionTime": "12.7", "cpuConsumptionUnit": "s",
        "cpuConversionFactor": "1.5", "startTime": "2024-01-01 10:00:00", "xml": json.dumps(REPORT),
        "metaData": '{"a": 1}', "pilotTiming": "1|2|3|4|5", "maxRSS": "1000",
    }  # fmt: skip


def test_update_extra_fields_are_sent_by_wire_name(mock, fake):
    mock.post(LEG_UPDATE, body="StatusCode=0&command=NULL")
    make(fake, api="legacy").update_job(JobUpdate(1, "running", 1, extra={"batchID": "b1"}))
    assert sent_form(mock) == {"jobId": "1", "state": "running", "attemptNr": "1", "batchID": "b1"}


@pytest.mark.parametrize(
    "command,expected",
    [
        ("tobekilled", Command.KILL), ("softkill", Command.SOFTKILL), ("debug", Command.DEBUG),
        ("debugoff", Command.DEBUGOFF), ("NULL", Command.NONE), (None, Command.NONE),
        ("badattemptnr", Command.NONE),
    ],
)  # fmt: skip
@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_commands(mock, fake, api, command, expected):
    if api == "v1":
        mock.post(V1_UPDATE, json=v1_ok({"StatusCode": 0, "command": command}))
    else:
        mock.post(LEG_UPDATE, body="StatusCode=0" + (f"&command={command}" if command else ""))
    assert make(fake, api=api).update_job(JobUpdate(1, "running", 1)) is expected


# --- job_status ----------------------------------------------------------------------------------


def test_v1_job_status(mock, fake):
    mock.get(V1_STATUS, json=v1_ok([{"job_id": 4242, "status": "holding", "attempt_number": 2}]))
    st = make(fake).job_status(4242)
    assert (st.job_id, st.status, st.attempt_nr, st.command) == (4242, "holding", 2, Command.NONE)
    req = mock.calls[0].request
    assert req.method == "GET" and req.url == V1_STATUS + "?job_ids=4242"


def test_v1_job_status_not_found(mock, fake):
    mock.get(V1_STATUS, json=v1_ok([{"job_id": 1, "status": "not found", "attempt_number": 0}]))
    st = make(fake).job_status(1)
    assert st.status == "unknown" and st.attempt_nr is None


def test_legacy_job_status(mock, fake):
    mock.post(LEG_STATUS, body="StatusCode=0&status=running&attemptNr=3")
    st = make(fake, api="legacy").job_status(77)
    assert (st.status, st.attempt_nr) == ("running", 3) and sent_form(mock) == {"ids": "77"}


def test_legacy_job_status_not_found_and_failure(mock, fake):
    mock.post(LEG_STATUS, body="StatusCode=0&status=notfound&attemptNr=0")
    mock.post(LEG_STATUS, body="StatusCode=30")
    d = make(fake, api="legacy")
    assert d.job_status(77).status == "unknown"
    assert fails(FailureKind.SERVER, lambda: d.job_status(77)).status == 30


def test_v1_job_status_bad_data(mock, fake):
    mock.get(V1_STATUS, json=v1_ok({"StatusCode": 0}))
    fails(FailureKind.PROTOCOL, lambda: make(fake).job_status(1))


# --- headers, TLS, housekeeping -------------------------------------------------------------------


@pytest.mark.parametrize("api,url", [("v1", V1_GET), ("legacy", LEG_GET)])
def test_headers_without_token(mock, fake, api, url):
    mock.post(
        url, json={"success": False, "message": "No jobs in PanDA"} if api == "v1" else {"StatusCode": 20}
    )
    make(fake, api=api).get_job(request())
    headers = mock.calls[0].request.headers
    assert headers["Accept"] == "application/json"
    assert "Authorization" not in headers and "Origin" not in headers


def test_token_headers_and_secrecy(mock, fake):
    mock.post(V1_GET, status=403, body=f"ERROR : Token authentication failed for {TOKEN}")
    d = make(fake, token=TOKEN, origin="atlas")
    err = fails(FailureKind.AUTH, lambda: d.get_job(request()))
    headers = mock.calls[0].request.headers
    assert headers["Authorization"] == f"Bearer {TOKEN}" and headers["Origin"] == "atlas"
    assert headers["Accept"] == "application/json"
    assert TOKEN not in err.diag and TOKEN not in str(err) and TOKEN not in repr(d.config)


def tls_kwargs(mock, fake, **cfg) -> dict:
    mock.post(V1_GET, json=v1_ok({"StatusCode": 20}))
    make(fake, **cfg).get_job(request())
    return mock.calls[-1].request.req_kwargs


def test_tls_defaults_verify_on(mock, fake):
    kw = tls_kwargs(mock, fake)
    assert kw["verify"] is True and kw["cert"] is None and kw["timeout"] == 60


def test_tls_cacert_and_cert_key(mock, fake):
    kw = tls_kwargs(mock, fake, cacert="/etc/ca.pem", cert="/c.pem", key="/k.pem", timeout=5)
    assert kw["verify"] == "/etc/ca.pem" and kw["cert"] == ("/c.pem", "/k.pem") and kw["timeout"] == 5


def test_tls_env_capath_and_proxy(mock, fake, monkeypatch):
    monkeypatch.setenv("X509_CERT_DIR", "/grid/certificates")
    monkeypatch.setenv("X509_USER_PROXY", "/tmp/x509up_u1")
    kw = tls_kwargs(mock, fake)
    assert kw["verify"] == "/grid/certificates" and kw["cert"] == "/tmp/x509up_u1"


def test_tls_explicit_settings_win_over_env(mock, fake, monkeypatch):
    monkeypatch.setenv("X509_CERT_DIR", "/grid/certificates")
    monkeypatch.setenv("X509_USER_PROXY", "/tmp/x509up_u1")
    kw = tls_kwargs(mock, fake, capath="/my/cas", cert="/c.pem")
    assert kw["verify"] == "/my/cas" and kw["cert"] == "/c.pem"
    assert tls_kwargs(mock, fake, proxy="/p.pem")["cert"] == "/p.pem"


def test_tls_insecure_only_when_asked(mock, fake):
    assert tls_kwargs(mock, fake, insecure=True)["verify"] is False


def test_debug_log_per_request(mock, fake, caplog):
    mock.post(V1_GET, json=v1_ok({"StatusCode": 20}))
    with caplog.at_level(logging.DEBUG, logger="pilot.dispatcher.panda"):
        make(fake).get_job(request())
    assert any(
        "/api/v1/pilot/acquire_jobs" in r.getMessage() and "HTTP 200" in r.getMessage()
        for r in caplog.records
    )


def test_close_closes_session(fake, monkeypatch):
    d = make(fake)
    closed = []
    monkeypatch.setattr(d._session, "close", lambda: closed.append(True))
    d.close()
    assert closed == [True]


@pytest.mark.parametrize("cfg", [{"api": "v2"}, {"url": "panda.example:25443"}])
def test_bad_config(cfg):
    with pytest.raises(ValueError):
        PandaDispatcher(PandaConfig(**{"url": URL, **cfg}))


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("api, url, body", [
    ("v1", V1_GET, DEEP),
    ("v1", V1_GET, '{"success": true, "data": {"StatusCode": 0, "jobs": [{"PandaID": 1, "x": ' + DEEP + "}]}}"),
    ("legacy", LEG_GET, '{"StatusCode": 0, "jobs": ' + json.dumps(DEEP) + "}"),  # the field holding JSON
])
def test_deeply_nested_reply_is_a_protocol_failure_not_a_recursion_error(mock, fake, api, url, body):
    mock.post(url, body=body, content_type="application/json")
    err = fails(FailureKind.PROTOCOL, lambda: make(fake, api=api).get_job(request()))
    assert "deeper than" in err.diag or "not a JSON list" in err.diag


def test_deeply_nested_update_reply_is_a_protocol_failure(mock, fake):
    mock.post(V1_UPDATE, body='{"success": true, "data": ' + DEEP + "}", content_type="application/json")
    fails(FailureKind.PROTOCOL, lambda: make(fake).update_job(JobUpdate(1, "running", 1)))


@pytest.mark.parametrize("api,url", [("v1", V1_GET), ("legacy", LEG_GET)])
def test_cache_report_is_sent_only_under_a_configured_field(mock, fake, api, url):
    mock.post(url, json=v1_ok({"StatusCode": 20}) if api == "v1" else {"StatusCode": 20})
    report = {"v": 1, "count": 1, "bytes": 10, "files": ["mc16:a.root"]}
    make(fake, api=api).get_job(request(cached_files=report))
    body = sent_json(mock) if api == "v1" else sent_form(mock)
    assert "cached_files" not in body and "cachedFiles" not in body and "SITE_A" in body.values()
    make(fake, api=api, cache_report_field="cachedFiles").get_job(request(cached_files=report))
    body = sent_json(mock) if api == "v1" else sent_form(mock)
    assert json.loads(body["cachedFiles"]) == report


def test_payload_figures_by_dialect(mock, fake):
    """meanCoreCount and maxSWAP go by each dialect's name; v1 wants meanCoreCount as a JSON integer."""
    update = JobUpdate(job_id=7, job_status="finished", attempt_nr=1, core_count=8, mean_core_count=6,
                       max_swap=512, cpu_consumption_unit="s+Test CPU @ 2.40GHz")
    mock.post(V1_UPDATE, json=v1_ok({"StatusCode": 0, "command": "NULL"}))
    make(fake).update_job(update)
    body = sent_json(mock)
    assert (body["mean_core_count"], body["core_count"], body["max_swap"]) == (6, 8, 512)
    mock.post(LEG_UPDATE, json={"StatusCode": 0, "command": "NULL"})
    make(fake, api="legacy").update_job(update)
    form = sent_form(mock)
    assert (form["meanCoreCount"], form["coreCount"], form["maxSWAP"]) == ("6", "8", "512")
    assert form["cpuConsumptionUnit"] == "s+Test CPU @ 2.40GHz"


class EndlessReply(io.RawIOBase):
    """A reply body that never ends (a broken or hostile server); counts what the client read of it."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = b" " * len(buffer)
        self.served += len(buffer)
        return len(buffer)


@pytest.mark.parametrize("api,url", [("v1", V1_GET), ("legacy", LEG_GET)])
def test_endless_reply_is_read_only_up_to_the_cap(mock, fake, monkeypatch, api, url):
    monkeypatch.setattr(panda, "MAX_REPLY", 1 << 20)
    endless = EndlessReply()
    mock.post(url, body=io.BufferedReader(endless), content_type="application/json")
    err = fails(FailureKind.PROTOCOL, lambda: make(fake, api=api).get_job(request()))
    assert f"reply larger than the limit of {1 << 20} bytes" in err.diag
    assert err.status == 200 and err.code == ErrorCode.COMMUNICATION_FAILURE
    assert (1 << 20) < endless.served <= (1 << 20) + 2 * panda.READ_CHUNK + io.DEFAULT_BUFFER_SIZE
    assert len(mock.calls) == 1  # not asked again: the server may have handed out a job


def test_reply_one_byte_over_64_mb_is_refused_and_one_at_the_cap_is_read(mock, fake):
    assert panda.MAX_REPLY == 64 * 2**20
    padded = json.dumps(v1_ok({"StatusCode": 0, "command": "NULL"}))
    at_cap = padded + " " * (panda.MAX_REPLY - len(padded))
    mock.post(V1_UPDATE, body=at_cap + " ", content_type="application/json")
    err = fails(FailureKind.PROTOCOL, lambda: make(fake).update_job(JobUpdate(1, "running", 1)))
    assert "reply larger than the limit of 67108864 bytes" in err.diag
    mock.replace(responses.POST, V1_UPDATE, body=at_cap, content_type="application/json")
    assert make(fake).update_job(JobUpdate(1, "running", 1)) is Command.NONE


def test_compressed_reply_is_bounded_after_decompression(mock, fake, monkeypatch):
    monkeypatch.setattr(panda, "MAX_REPLY", 1 << 20)
    bomb = gzip.compress(b" " * (8 << 20))  # 8 kB that inflate to 8 MB
    mock.post(V1_GET, body=bomb, content_type="application/json", headers={"Content-Encoding": "gzip"})
    err = fails(FailureKind.PROTOCOL, lambda: make(fake).get_job(request()))
    assert "reply larger than the limit" in err.diag


def test_declared_length_over_the_cap_is_refused_unread(mock, fake, monkeypatch):
    monkeypatch.setattr(panda, "MAX_REPLY", 1 << 20)
    endless = EndlessReply()
    mock.post(V1_GET, body=io.BufferedReader(endless), content_type="application/json",
              headers={"Content-Length": str(2 << 20)})
    err = fails(FailureKind.PROTOCOL, lambda: make(fake).get_job(request()))
    assert f"({2 << 20} bytes or more)" in err.diag
    assert endless.served == 0


class TrickleTime(FakeTime):
    """A clock that moves a second each time it is read: a server sending a chunk a second."""

    def clock(self) -> float:
        self.now += 1.0
        return self.now


def test_a_reply_still_coming_after_the_timeout_is_a_transport_failure(mock):
    endless = EndlessReply()
    mock.post(V1_GET, body=io.BufferedReader(endless), content_type="application/json")
    mock.post(V1_UPDATE, body=io.BufferedReader(EndlessReply()), content_type="application/json")
    fake = TrickleTime()
    err = fails(FailureKind.LOST, lambda: make(fake, timeout=10).get_job(request()))
    assert "reply not complete after 10 s" in err.diag
    assert endless.served < 20 * panda.READ_CHUNK
    err = fails(FailureKind.TRANSPORT, lambda: make(fake, timeout=10, retry_budget=5).update_job(
        JobUpdate(1, "running", 1)))  # retried as any transport failure, here within a budget already spent
    assert "giving up after 1 attempt(s)" in err.diag and "ReadTimeout: reply not complete" in err.diag
