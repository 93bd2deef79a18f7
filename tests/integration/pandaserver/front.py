"""Minimal TLS WSGI front for the UNMODIFIED panda-server app (run with the panda-server venv's python).

It does what the production Apache (mod_ssl + mod_wsgi) configuration does for the app:
  * TLS on 127.0.0.1, client certificate requested but optional (``SSLVerifyClient optional``),
    verified against the test CA;
  * ``SCRIPT_NAME`` = the whole request path (``WSGIScriptAlias`` per method; the app routes on
    SCRIPT_NAME: ``/server/panda/<method>`` or ``/api/v1/<module>/<method>``), ``PATH_INFO`` empty;
  * an empty ``CONTENT_LENGTH`` is dropped (the app does ``int(environ.get("CONTENT_LENGTH", 0))``);
  * ``SSLOptions +StdEnvVars +LegacyDNStringFormat``: ``SSL_CLIENT_S_DN`` / ``SSL_CLIENT_I_DN`` in the
    legacy slash format ``/C=CH/O=.../CN=...`` from the *verified* client certificate, plus
    ``SSL_CLIENT_VERIFY``, ``SSL_PROTOCOL``, ``SSL_CIPHER``, ``SSL_CLIENT_M_SERIAL``, ``HTTPS=on``;
  * ``Authorization`` passed through (``WSGIPassAuthorization On``).

Only the standard library is used. Threaded; one request per connection (HTTP/1.0 style replies).
The app is imported before the port is bound, so "port accepts connections" means "ready".
SIGTERM stops the server. The app sends itself SIGINT after an OSError (under mod_wsgi the daemon
process is then recycled); here that signal is logged and ignored so a test run keeps its server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import ssl
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

log = logging.getLogger("panda-front")

# getpeercert() long attribute names -> Apache/OpenSSL short names
SHORT_NAMES = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
    "userId": "UID",
    "serialNumber": "serialNumber",
}


def legacy_dn(rdns: tuple) -> str:
    """Render a getpeercert() subject/issuer as Apache's LegacyDNStringFormat (certificate order)."""
    parts = []
    for rdn in rdns:
        for key, value in rdn:
            parts.append(f"/{SHORT_NAMES.get(key, key)}={value}")
    return "".join(parts)


class Handler(WSGIRequestHandler):
    handshake_timeout = 30.0

    def setup(self) -> None:
        # TLS handshake in the worker thread, not in the accept loop
        self.request.settimeout(self.handshake_timeout)
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()

    def get_environ(self) -> dict:
        env = super().get_environ()
        env["SCRIPT_NAME"] = env.get("PATH_INFO", "")
        env["PATH_INFO"] = ""
        if not env.get("CONTENT_LENGTH"):
            env.pop("CONTENT_LENGTH", None)
        env["HTTPS"] = "on"
        conn: ssl.SSLSocket = self.request
        env["SSL_PROTOCOL"] = conn.version() or ""
        cipher = conn.cipher()
        if cipher:
            env["SSL_CIPHER"] = cipher[0]
        cert = conn.getpeercert()
        if cert:
            env["SSL_CLIENT_VERIFY"] = "SUCCESS"
            env["SSL_CLIENT_S_DN"] = legacy_dn(cert.get("subject", ()))
            env["SSL_CLIENT_I_DN"] = legacy_dn(cert.get("issuer", ()))
            env["SSL_CLIENT_M_SERIAL"] = cert.get("serialNumber", "")
            env["SSL_CLIENT_V_START"] = cert.get("notBefore", "")
            env["SSL_CLIENT_V_END"] = cert.get("notAfter", "")
        else:
            env["SSL_CLIENT_VERIFY"] = "NONE"
        return env

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        log.info("%s %s", self.address_string(), format % args)


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLEOFError):
            log.debug("connection from %s closed during the TLS handshake", client_address)
        elif isinstance(exc, (ssl.SSLError, ConnectionError, socket.timeout)):
            log.warning("connection from %s failed: %r", client_address, exc)
        else:
            log.exception("error serving %s", client_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server key (PEM)")
    parser.add_argument("--ca", required=True, help="CA used to verify client certificates")
    parser.add_argument("--app", default="pandaserver.server.panda:application")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)

    module_name, attr = args.app.split(":")
    log.info("importing %s", args.app)
    app = getattr(importlib.import_module(module_name), attr)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    context.load_verify_locations(cafile=args.ca)
    context.verify_mode = ssl.CERT_OPTIONAL

    server = Server((args.host, args.port), Handler)
    server.set_app(app)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)

    def on_term(signum, frame):
        log.info("signal %d: shutting down", signum)
        raise SystemExit(0)

    def on_int(signum, frame):
        log.warning("SIGINT received (the app does this after an OSError); ignored")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    log.info("serving https://%s:%d", args.host, args.port)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log.info("stopped")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # the app leaves non-daemon threads (DB proxy pool, caches) that would keep the
        # interpreter alive; under mod_wsgi the process is simply torn down, so do the same
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
