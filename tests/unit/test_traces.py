"""Traces: the fields Rucio's trace schema wants, and a trace that cannot be sent never raises."""

from __future__ import annotations

import json

import pytest
import requests
import responses

from pilot.traces import Trace, Tracer, TraceSender, event_type

URL = "http://rucio.example/traces/"


class Spec:
    lfn, scope, dataset, guid, fsize, ddm_endpoint = "f.root", "mc16", "ds", "g", 42, "EP"


def test_event_types():
    assert [event_type("in", False), event_type("in", True), event_type("out", False), event_type("out", True)] \
        == ["get_sm", "get_sm_a", "put_sm", "put_sm_a"]


@responses.activate
def test_done_and_failed_traces_carry_the_schema_fields():
    responses.add(responses.POST, URL, status=201)
    tracer = Tracer("Q", URL)
    tracer.job(7, analysis=False)
    with tracer.transfer("out", Spec(), "root://h//f.root", "xrootd"):
        pass
    with pytest.raises(ValueError), tracer.transfer("in", Spec(), "root://h//f.root", "xrootd"):
        raise ValueError("broken\nin two lines")
    sent = [json.loads(call.request.body) for call in responses.calls]
    assert [(t["eventType"], t["clientState"]) for t in sent] == [("put_sm", "DONE"), ("get_sm", "FAILED")]
    for trace in sent:
        for key in ("eventVersion", "uuid", "scope", "filename", "dataset", "localSite", "remoteSite", "filesize",
                    "protocol", "transferStart", "transferEnd", "appid", "pq", "hostname"):
            assert key in trace, key
        assert trace["appid"] == "7" and trace["pq"] == "Q" and trace["filesize"] == 42
    assert sent[1]["stateReason"] == "broken\nin two lines"


@pytest.mark.parametrize("failure", [requests.ConnectionError("refused"), requests.Timeout("slow")])
@responses.activate
def test_unreachable_endpoint_never_raises(failure, caplog):
    responses.add(responses.POST, URL, body=failure)
    sender = TraceSender(URL)
    assert sender.send(Trace("get_sm", "s", "a")) is False
    assert sender.send(Trace("get_sm", "s", "b")) is False
    assert len([r for r in caplog.records if "not sent" in r.getMessage()]) == 1  # warned once


@responses.activate
def test_server_error_is_not_success():
    responses.add(responses.POST, URL, status=500)
    assert TraceSender(URL).send(Trace("put_sm", "s", "a")) is False


def test_no_url_sends_nothing():
    tracer = Tracer("Q", "")
    with tracer.transfer("in", Spec(), "u", "local") as trace:
        pass
    assert tracer.sender is None and trace.clientState == "DONE"
