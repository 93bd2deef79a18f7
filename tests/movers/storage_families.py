"""The contract suite's real-storage families: xrootd and gfal (root://, davs://) against the XRootD server
on loopback (tests/servers/xrootd.py), gfal on file://, and rucio against the Rucio server on loopback
(tests/servers/rucio.py: its RSE on that XRootD).

The storage is looked at behind the mover's back: the XRootD export is a directory on this machine, and
files placed there for a test belong to the server's account, as if the server had written them."""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
from pathlib import Path
from typing import Optional

import pytest

from sitemovers.base import MoverSettings, SiteMover
from sitemovers.gfal import GfalSiteMover, load_gfal2
from sitemovers.rucio import RucioSiteMover
from sitemovers.xrootd import XRootDSiteMover
from tests.movers.conftest import (
    Family,
    directory_family,
    failing_setup_settings,
    hanging_tool_settings,
    read_only,
    small_tmpfs,
)
from tests.servers.rucio import SCOPE as RUCIO_SCOPE
from tests.servers.xrootd import XRootDServer

_serial = itertools.count()


def xrootd_area(server: XRootDServer) -> Path:
    root = server.data / f"contract{next(_serial)}"
    root.mkdir()
    server.chown(root)
    return root


def served_directory_family(name: str, server: XRootDServer, make, to_url) -> Family:
    """A directory family whose directory is under the XRootD export: what is placed there is the
    server's (its account may write beside it), and read-only/full apply to that directory."""
    root = xrootd_area(server)
    family = directory_family(name, root, make, lambda rel: to_url(root / rel))
    plain_place = family.place

    def place(rel: str, data: bytes) -> None:
        plain_place(rel, data)
        path = root / rel
        while path != root:
            server.chown(path)
            path = path.parent

    family.place = place
    family.readonly = lambda: read_only(root)
    family.full = lambda: small_tmpfs(root)
    return family


def needs_gfal2() -> None:
    try:
        load_gfal2()
    except Exception as exc:  # noqa: BLE001 - any reason the bindings cannot load
        pytest.skip(f"gfal2 bindings not available: {exc}")


def family_xrootd(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    server = request.getfixturevalue("xrootd_server")
    family = served_directory_family("xrootd", server, XRootDSiteMover, server.root_url)
    family.hang_settings = hanging_tool_settings(tmp_path, "xrdcp", "xrdfs")
    family.failing_setup = failing_setup_settings(tmp_path)
    return family


def family_gfal_root(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    needs_gfal2()
    server = request.getfixturevalue("xrootd_server")
    return served_directory_family("gfal-root", server, GfalSiteMover, server.root_url)


def family_gfal_davs(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    needs_gfal2()
    server = request.getfixturevalue("xrootd_server")
    request.getfixturevalue("monkeypatch").setenv("X509_CERT_DIR", str(server.ca_dir))
    family = served_directory_family("gfal-davs", server, GfalSiteMover, server.davs_url)
    family.readonly = family.full = None  # not provokable over XrdHttp (tests/movers/matrix.py)
    return family


def family_gfal_file(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    needs_gfal2()
    root = tmp_path / "se"
    family = directory_family("gfal-file", root, GfalSiteMover, lambda rel: f"file://{root}/{rel}")
    family.full = None  # not provokable with gfal2's file plugin (tests/movers/matrix.py)
    return family


# --- rucio: the RSE XRD_DISK of the Rucio server on loopback, whose storage is the XRootD export ------------
RUCIO_RSE = "XRD_DISK"
# Run by the client venv: upload and register a file, as a site or another job would have put it there
# (without the client's own trace: the server's trace file is the pilot's traces, read by the tests).
RUCIO_PLACE = """\
import logging, sys
from rucio.client.uploadclient import UploadClient
class Logger(logging.Logger):  # the client calls its logger, and calls its .log
    def __call__(self, level, msg, *args, **kwargs):
        self.log(level, msg, *args, **kwargs)
path, rse, scope = sys.argv[1:4]
item = {"path": path, "rse": rse, "did_scope": scope, "register_after_upload": True}
UploadClient(logger=Logger("place"), tracing=False).upload([item])
"""


def family_rucio(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    """Files are DIDs `tests:<area>.<relative path with dots>` (the session's catalogue keeps every name
    once, so each test has its own area); the RSE places them by its hash algorithm under its directory
    of the XRootD export, where `read` and `listing` look for them by name."""
    server = request.getfixturevalue("rucio_server")
    xrootd = request.getfixturevalue("xrootd_server")
    area = f"c{next(_serial)}x{secrets.token_hex(3)}"
    scope_dir = xrootd.data / "rucio" / RUCIO_SCOPE
    setup = str(server.setup_script())

    def did_name(rel: str) -> str:
        return f"{area}.{rel.replace('/', '.')}"

    def make(settings: MoverSettings) -> SiteMover:
        return RucioSiteMover(settings if settings.setup else dataclasses.replace(settings, setup=setup))

    def place(rel: str, data: bytes) -> None:
        local = tmp_path / "placed" / did_name(rel)
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(data)
        server.client(RUCIO_PLACE, str(local), RUCIO_RSE, RUCIO_SCOPE)

    def stored(prefix: str) -> dict[str, Path]:
        return {name[len(prefix):]: Path(root) / name for root, _dirs, names in os.walk(scope_dir)
                for name in names if name.startswith(prefix)}

    def read(rel: str) -> Optional[bytes]:
        path = stored(did_name(rel)).get("")
        return path.read_bytes() if path is not None else None

    def listing(rel: str) -> list[str]:
        return sorted(stored(did_name(rel) + "."))

    scope_dir.mkdir(parents=True, exist_ok=True)
    xrootd.chown(scope_dir)
    family = Family("rucio", make, lambda rel: f"rucio://{RUCIO_RSE}/{RUCIO_SCOPE}/{did_name(rel)}", place, read,
                    listing, readonly=lambda: read_only(scope_dir), full=lambda: small_tmpfs(scope_dir))
    family.hang_settings = hanging_tool_settings(tmp_path, "python3")
    family.failing_setup = failing_setup_settings(tmp_path)
    return family


STORAGE_FAMILIES = {
    "xrootd": family_xrootd,
    "gfal-root": family_gfal_root,
    "gfal-davs": family_gfal_davs,
    "gfal-file": family_gfal_file,
    "rucio": family_rucio,
}
