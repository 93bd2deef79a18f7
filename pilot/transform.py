"""An analysis job's transformation script, downloaded only from base URLs the queue trusts.

The queue lists trusted bases (`trf_trusted_urls`). A URL is trusted when, after normalisation, its
scheme, host and port equal a base's and its path starts with the base's path (taken as a directory).
Refused outright, before any request: user-info in the authority (`https://trusted@evil/`), a backslash,
a `.` or `..` path segment (also percent-encoded), an encoded slash, a control character. Redirects are
followed by hand, each hop checked the same way before it is requested, so an untrusted place never
sees a request. Each attempt has a timeout (connect, each read, and the whole body), the body a size
cap; failures in transport or 5xx answers are retried, a refusal, a 4xx or an oversized script is not.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit

import requests

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.job import check_name

log = logging.getLogger(__name__)

MB = 2**20
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Untrusted(ValueError):
    """A URL that is not under a trusted base, or cannot be read without ambiguity."""


@dataclass(frozen=True)
class Location:
    scheme: str
    host: str
    port: int
    path: str  # as sent (percent-encoded), at least "/"

    def under(self, base: Location) -> bool:
        prefix = base.path if base.path.endswith("/") else base.path + "/"
        return ((self.scheme, self.host, self.port) == (base.scheme, base.host, base.port)
                and (self.path == base.path or self.path.startswith(prefix)))


def parse(url: str) -> Location:
    """The URL's parts after normalisation; Untrusted when it is ambiguous or hostile."""
    if any(not c.isprintable() or c.isspace() for c in url):
        raise Untrusted("contains a control character or white space")
    if "\\" in url:
        raise Untrusted("contains a backslash")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise Untrusted(f"scheme {parts.scheme!r} is not http or https")
    if "@" in parts.netloc:
        raise Untrusted("carries user information in its host part")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise Untrusted("has no host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise Untrusted("has an invalid port") from None
    path = parts.path or "/"
    if "%2f" in path.lower() or "%5c" in path.lower():
        raise Untrusted("has an encoded slash in its path")
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise Untrusted("has a '.' or '..' path segment")
    return Location(scheme, host, port, path)


def trusted(url: str, bases: list[str]) -> Location:
    """The URL's location when it lies under one of `bases`; Untrusted otherwise."""
    where = parse(url)
    for base in bases:
        try:
            if where.under(parse(base)):
                return where
        except Untrusted:
            log.warning("trusted base %r is not a usable URL: ignored", base)
    raise Untrusted("is not under a trusted base URL")


@dataclass
class Downloader:
    """Fetches one script into a directory, with the queue's trust list, cap, timeout and retries."""

    bases: list[str]
    max_bytes: int
    timeout: float
    retries: int
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def for_queue(cls, queue: QueueConfig) -> Downloader:
        return cls([str(b) for b in queue.trf_trusted_urls], queue.trf_max_size * MB, queue.trf_timeout,
                   max(1, queue.trf_retries))

    def fetch(self, url: str, directory: Path) -> Path:
        """The script as an executable file in `directory`; PilotError 1149 when it cannot be had."""
        self._check(url, url)  # nothing is requested for a URL that is not trusted
        name = script_name(url)
        failure = ""
        for attempt in range(1, self.retries + 1):
            try:
                return self._attempt(url, directory, name)
            except _Retry as exc:
                failure = str(exc)
                log.warning("transformation download attempt %d/%d failed: %s", attempt, self.retries, failure)
                if attempt < self.retries:
                    self.sleep(min(2.0 * attempt, 10.0))
        raise PilotError(ErrorCode.TRF_DOWNLOAD_FAILED, f"{url}: {failure} ({self.retries} attempt(s))")

    def _check(self, url: str, original: str) -> None:
        if not self.bases:
            raise PilotError(ErrorCode.TRF_DOWNLOAD_FAILED,
                             f"{original}: the queue trusts no transformation URL (trf_trusted_urls)")
        try:
            trusted(url, self.bases)
        except Untrusted as exc:
            hop = "" if url == original else f" (redirected to {url})"
            raise PilotError(ErrorCode.TRF_DOWNLOAD_FAILED, f"{original}{hop}: refused: the URL {exc}") from None

    def _attempt(self, url: str, directory: Path, name: str) -> Path:
        deadline = time.monotonic() + self.timeout
        current = url
        with requests.Session() as session:
            session.trust_env = False  # no proxies, no .netrc credentials from the environment
            for _hop in range(MAX_REDIRECTS + 1):
                try:
                    reply = session.get(current, stream=True, allow_redirects=False,
                                        timeout=(self.timeout, self.timeout))
                except requests.RequestException as exc:
                    raise _Retry(f"{type(exc).__name__}: {exc}") from None
                with reply:
                    if reply.status_code in REDIRECTS:
                        target = urljoin(current, reply.headers.get("Location", ""))
                        log.info("transformation %s redirected to %s", current, target)
                        self._check(target, url)
                        current = target
                        continue
                    if reply.status_code >= 500:
                        raise _Retry(f"HTTP {reply.status_code}")
                    if reply.status_code != 200:
                        raise PilotError(ErrorCode.TRF_DOWNLOAD_FAILED, f"{url}: HTTP {reply.status_code}")
                    return self._save(reply, url, directory, name, deadline)
        raise PilotError(ErrorCode.TRF_DOWNLOAD_FAILED, f"{url}: more than {MAX_REDIRECTS} redirects")

    def _save(self, reply: requests.Response, url: str, directory: Path, name: str, deadline: float) -> Path:
        declared = reply.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_big(url, int(declared))
        target = directory / name
        tmp = directory / f".{name}.download"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in reply.iter_content(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_big(url, size)
                    if time.monotonic() > deadline:
                        raise _Retry(f"download not complete after {self.timeout:g} s")
                    handle.write(chunk)
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        except requests.RequestException as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        log.info("transformation %s downloaded: %d bytes", url, size)
        return target

    def _too_big(self, url: str, size: int) -> PilotError:
        return PilotError(ErrorCode.TRF_DOWNLOAD_FAILED,
                          f"{url}: larger than the cap of {self.max_bytes} bytes ({size} bytes or more)")


class _Retry(Exception):
    """A failure worth another attempt."""


def script_name(url: str) -> str:
    """The file name the script gets in the work dir: the URL path's last segment, checked."""
    last = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return check_name(last, "transformation name")


def is_url(transformation: str) -> bool:
    return transformation.startswith(("http://", "https://"))

