"""Analysis transformations from trusted URLs only, against real HTTP servers on 127.0.0.1.

Two servers: the trusted one serves scripts under /trf/; the other one stands for any place the queue
does not trust. Both log every request they see, so a refusal is proven by the other's empty log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pilot.config import PilotConfig, QueueConfig
from pilot.control import Control
from pilot.dispatcher.local import LocalDispatcher
from pilot.errors import ErrorCode, PilotError
from pilot.job import parse_job
from pilot.jobrun import JobRun, PilotContext
from pilot.node import NodeInfo
from pilot.transform import Downloader, Untrusted, trusted
from sitemovers.registry import Registry

SCRIPT = b'#!/bin/sh\necho "ran with $# words: $*" > out.dat\n'


class Server:
    """A real http.server in a thread; `seen` lists the paths it was asked for."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = threading.Event()  # ends the hanging answer at shutdown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                server.seen.append(self.path)
                route = ROUTES.get(self.path.split("?")[0], ROUTES["*"])
                route(self, server)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for key, val in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(key.replace("_", "-"), val)
    handler.end_headers()
    handler.wfile.write(body)


def _stream(handler: BaseHTTPRequestHandler, server: Server) -> None:
    handler.send_response(200)
    handler.end_headers()
    for _ in range(64):  # 4 MB without a Content-Length
        handler.wfile.write(b"#" * 65536)


def _hang(handler: BaseHTTPRequestHandler, server: Server) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"#!/bin/sh\n")
    handler.wfile.flush()
    server.release.wait(30)


ROUTES = {
    "/trf/runGen.sh": lambda h, s: _send(h, 200, SCRIPT),
    "/trf/moved.sh": lambda h, s: _send(h, 302, Location="/trf/runGen.sh"),
    "/trf/away.sh": lambda h, s: _send(h, 302, Location=s.other + "/evil.sh"),
    "/trf/big.sh": lambda h, s: _send(h, 200, b"#" * 4096),
    "/trf/stream.sh": _stream,
    "/trf/hang.sh": _hang,
    "/trf/broken.sh": lambda h, s: _send(h, 500, b"oops"),
    "*": lambda h, s: _send(h, 404, b"no such script"),
}


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[Server, Server]]:
    good, other = Server(), Server()
    good.other = other.url  # type: ignore[attr-defined]
    other.other = good.url  # type: ignore[attr-defined]
    try:
        yield good, other
    finally:
        good.stop()
        other.stop()


@pytest.fixture
def good(servers) -> Server:
    servers[0].seen.clear()
    servers[1].seen.clear()
    return servers[0]


@pytest.fixture
def other(servers) -> Server:
    return servers[1]


def downloader(good: Server, **kw) -> Downloader:
    settings = {"max_bytes": 1024, "timeout": 5.0, "retries": 2, "sleep": lambda s: None, **kw}
    return Downloader([good.url + "/trf/"], **settings)


def failure(action) -> PilotError:
    with pytest.raises(PilotError) as caught:
        action()
    assert caught.value.code == ErrorCode.TRF_DOWNLOAD_FAILED
    return caught.value


def test_a_script_from_a_trusted_base_is_downloaded_executable(good, work):
    path = downloader(good).fetch(good.url + "/trf/runGen.sh", work)
    assert path == work / "runGen.sh" and path.read_bytes() == SCRIPT and path.stat().st_mode & 0o111


def test_a_redirect_inside_the_trusted_base_is_followed(good, work):
    assert downloader(good).fetch(good.url + "/trf/moved.sh", work).read_bytes() == SCRIPT
    assert good.seen == ["/trf/moved.sh", "/trf/runGen.sh"]


def test_a_redirect_to_an_untrusted_place_is_never_requested(good, other, work):
    error = failure(lambda: downloader(good).fetch(good.url + "/trf/away.sh", work))
    assert "redirected to" in error.diag and "not under a trusted base" in error.diag
    assert other.seen == [] and good.seen == ["/trf/away.sh"]


@pytest.mark.parametrize("make_url", [
    lambda good, other: other.url + "/trf/runGen.sh",  # another base (another port)
    lambda good, other: good.url + "/other/runGen.sh",  # another path
    lambda good, other: good.url + "/trfx/runGen.sh",  # a prefix of the name is not a directory
    lambda good, other: good.url + "/trf/../evil.sh",
    lambda good, other: good.url + "/trf/%2e%2e/evil.sh",
    lambda good, other: good.url + "/trf/..%2fevil.sh",
    lambda good, other: f"http://{good.url[7:]}@{other.url[7:]}/trf/runGen.sh",  # user-info trick
    lambda good, other: good.url.replace("http:", "https:") + "/trf/runGen.sh",  # another scheme
    lambda good, other: good.url + "\\@evil.example/trf/runGen.sh",
])
def test_an_untrusted_url_is_refused_without_a_request(good, other, work, make_url):
    failure(lambda: downloader(good).fetch(make_url(good, other), work))
    assert good.seen == [] and other.seen == []
    assert list(work.iterdir()) == []


def test_no_trusted_base_means_no_download(good, work):
    error = failure(lambda: Downloader([], 1024, 5, 1).fetch(good.url + "/trf/runGen.sh", work))
    assert "trf_trusted_urls" in error.diag and good.seen == []


@pytest.mark.parametrize("name, what", [("big.sh", "larger than the cap"), ("stream.sh", "larger than the cap")])
def test_an_oversized_script_fails_without_retries(good, work, name, what):
    error = failure(lambda: downloader(good).fetch(f"{good.url}/trf/{name}", work))
    assert what in error.diag and good.seen == [f"/trf/{name}"]
    assert list(work.iterdir()) == [], "no partial file is left"


def test_a_failing_server_is_retried_then_fails(good, work):
    error = failure(lambda: downloader(good, retries=3).fetch(good.url + "/trf/broken.sh", work))
    assert "HTTP 500" in error.diag and good.seen == ["/trf/broken.sh"] * 3


def test_a_missing_script_is_not_retried(good, work):
    error = failure(lambda: downloader(good).fetch(good.url + "/trf/nothing.sh", work))
    assert "HTTP 404" in error.diag and len(good.seen) == 1


def test_a_hanging_download_times_out(good, work):
    begin = time.monotonic()
    error = failure(lambda: downloader(good, timeout=0.5, retries=1).fetch(good.url + "/trf/hang.sh", work))
    assert "Timeout" in error.diag or "timed out" in error.diag.lower()
    assert time.monotonic() - begin < 20
    assert list(work.iterdir()) == []


def test_trust_is_matched_on_scheme_host_port_and_path():
    bases = ["https://Cache.Example:443/trf/user"]
    assert trusted("https://cache.example/trf/user/runGen-00-00-02", bases).host == "cache.example"
    assert trusted("https://cache.example./trf/user/x", bases).port == 443
    for url in ("http://cache.example/trf/user/x", "https://cache.example:8443/trf/user/x",
                "https://cache.example/trf/userx", "https://cache.example/trf/user/./x", "ftp://cache.example/x"):
        with pytest.raises(Untrusted):
            trusted(url, bases)


def test_an_analysis_job_runs_the_downloaded_script(good, tmp_path):
    (tmp_path / "se").mkdir()
    dispatcher = LocalDispatcher(tmp_path / "jobs")
    ctx = PilotContext(
        config=PilotConfig(queue="Q", dispatcher=str(tmp_path / "jobs"), workdir=tmp_path / "work"),
        queue=QueueConfig(name="Q", se=str(tmp_path / "se"), kill_grace=2, trf_trusted_urls=[good.url + "/trf"]),
        node=NodeInfo(host="node01", cores=2, memory_mb=4000, disk_free_mb=10_000, cpu_mhz=0),
        dispatcher=dispatcher, registry=Registry(), control=Control(),
    )

    def run(panda_id: int, url: str):
        job = parse_job({"PandaID": str(panda_id), "transformation": url, "jobPars": "-i 'a b' -o out.dat",
                         "prodSourceLabel": "user", "outFiles": f"out.dat,{panda_id}.log.tgz",
                         "logFile": f"{panda_id}.log.tgz"})
        return JobRun(job, ctx, tmp_path / "work" / str(panda_id)).run()

    result = run(1, good.url + "/trf/runGen.sh")
    assert result.state == "finished", result.diag
    assert (tmp_path / "se" / "out.dat").read_text() == "ran with 4 words: -i a b -o out.dat\n"
    refused = run(2, good.url + "/trf/away.sh")
    assert (refused.state, refused.error_code) == ("failed", ErrorCode.TRF_DOWNLOAD_FAILED)
    assert [h["job_status"] for h in dispatcher.history(2)] == ["starting", "failed"]
