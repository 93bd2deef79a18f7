"""The contract suite's real-storage families: xrootd and gfal (root://, davs://) against the XRootD server
on loopback (tests/servers/xrootd.py), gfal on file://, and rucio against the Rucio server.

The storage is looked at behind the mover's back: the XRootD export is a directory on this machine, and
files placed there for a test belong to the server's account, as if the server had written them."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from sitemovers.gfal import GfalSiteMover, load_gfal2
from sitemovers.xrootd import XRootDSiteMover
from tests.movers.conftest import (
    Family,
    directory_family,
    failing_setup_settings,
    hanging_tool_settings,
    read_only,
    small_tmpfs,
)
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


ROOT_SKIPS = {
    "hostile": "a root:// URL cannot carry '?' (it starts XRootD's opaque part): such a name is refused "
               "(UNSUPPORTED, one line), tested with the other hostile names in tests/storage",
}
GFAL_SKIPS = {
    "timeout": "gfal2 runs in-process, no command to hang: its own transfer timeout ends a stalled copy "
               "(tests/storage: the XRootD stopped mid-transfer)",
    "setup": "the gfal mover sources no setup script (the bindings are loaded in-process)",
}


def family_xrootd(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    server = request.getfixturevalue("xrootd_server")
    family = served_directory_family("xrootd", server, XRootDSiteMover, server.root_url)
    family.hang_settings = hanging_tool_settings(tmp_path, "xrdcp", "xrdfs")
    family.skip_reasons = dict(ROOT_SKIPS)
    family.failing_setup = failing_setup_settings(tmp_path)
    return family


def family_gfal_root(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    needs_gfal2()
    server = request.getfixturevalue("xrootd_server")
    family = served_directory_family("gfal-root", server, GfalSiteMover, server.root_url)
    family.skip_reasons = {**GFAL_SKIPS, **ROOT_SKIPS}
    return family


def family_gfal_davs(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    needs_gfal2()
    server = request.getfixturevalue("xrootd_server")
    request.getfixturevalue("monkeypatch").setenv("X509_CERT_DIR", str(server.ca_dir))
    family = served_directory_family("gfal-davs", server, GfalSiteMover, server.davs_url)
    # XrdHttp answers a write to a read-only or full file system with HTTP 500 or a dropped connection:
    # nothing tells them from other server errors (they fail as FAILED, nothing left: tests/storage).
    family.readonly = family.full = None
    family.skip_reasons = {**GFAL_SKIPS, "readonly": "XrdHttp reports a read-only file system as HTTP 500",
                           "full": "XrdHttp drops the connection when its file system is full",
                           "hostile": "'?' cannot travel in XRootD's http URLs (refused in one line; the other "
                                      "hostile names are tested in tests/storage)"}
    return family


def family_gfal_file(request: pytest.FixtureRequest, tmp_path: Path) -> Family:
    needs_gfal2()
    root = tmp_path / "se"
    family = directory_family("gfal-file", root, GfalSiteMover, lambda rel: f"file://{root}/{rel}")
    family.full = None  # gfal2's file plugin reports a full disk as a checksum mismatch (nothing is left)
    family.skip_reasons = {**GFAL_SKIPS, "full": "gfal2's file plugin does not report ENOSPC: a full disk ends "
                                                 "as a checksum mismatch, with nothing left"}
    return family


STORAGE_FAMILIES = {
    "xrootd": family_xrootd,
    "gfal-root": family_gfal_root,
    "gfal-davs": family_gfal_davs,
    "gfal-file": family_gfal_file,
}
