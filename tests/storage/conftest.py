"""Per-family fixtures for the real-storage movers: each gives a mover and where its storage lives."""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sitemovers.base import SiteMover
from sitemovers.checksum import Checksum
from sitemovers.gfal import GfalSiteMover, load_gfal2
from sitemovers.xrootd import XRootDSiteMover
from tests.servers.xrootd import XRootDServer

_serial = itertools.count()


@dataclass
class Storage:
    """A mover and a fresh directory of real storage: `url(name)` addresses a file, `path(name)` is where
    the storage keeps it on disk (to look behind the mover's back)."""

    mover: SiteMover
    root: Path
    to_url: Callable[[Path], str]

    def url(self, name: str) -> str:
        return self.to_url(self.root / name)

    def path(self, name: str) -> Path:
        return self.root / name

    def names(self) -> list[str]:
        return sorted(os.listdir(self.root)) if self.root.exists() else []


FAMILIES = ["xrootd", "gfal-root", "gfal-davs", "gfal-file"]


def make_storage(family: str, server: XRootDServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Storage:
    root = server.data / f"t{next(_serial)}"
    root.mkdir()
    server.chown(root)
    if family == "xrootd":
        return Storage(XRootDSiteMover(), root, server.root_url)
    try:
        load_gfal2()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"gfal2 bindings not available: {exc}")
    if family == "gfal-root":
        return Storage(GfalSiteMover(), root, server.root_url)
    if family == "gfal-davs":
        monkeypatch.setenv("X509_CERT_DIR", str(server.ca_dir))  # the throw-away CA, as a site's CA directory
        return Storage(GfalSiteMover(), root, server.davs_url)
    local = tmp_path / "se"
    local.mkdir()
    return Storage(GfalSiteMover(), local, lambda path: f"file://{path}")


@pytest.fixture(params=FAMILIES)
def storage(request: pytest.FixtureRequest, xrootd_server: XRootDServer, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Storage:
    return make_storage(request.param, xrootd_server, tmp_path, monkeypatch)


def write_file(path: Path, size: int = 100_000) -> Checksum:
    data = os.urandom(size)
    path.write_bytes(data)
    return Checksum("adler32", f"{zlib.adler32(data) & 0xFFFFFFFF:08x}")


def one_file_job(lfn: str, data: bytes, scope: str = "tests", out: str = "out.root", **extra: str):
    """A job with one input (`lfn`, its size and adler32 from `data`) and one output `out`."""
    from pilot.job import parse_job
    from tests.unit.conftest import _job_dict

    checksum = f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
    fields = dict(inFiles=lfn, GUID="0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", fsize=str(len(data)),
                  checksum=f"ad:{checksum}", scopeIn=scope, dispatchDblock="NULL", realDatasetsIn="ds.in",
                  prodDBlockToken="NULL", ddmEndPointIn="NULL", outFiles=f"{out},log.tgz", realDatasets="ds.out,ds.log",
                  scopeOut=scope, scopeLog=scope, ddmEndPointOut="NULL,NULL", destinationDBlockToken="NULL,NULL",
                  GUID_out="", logGUID="5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9", jobPars="")
    fields.update(extra)
    fields.pop("GUID_out")
    return parse_job(_job_dict(**fields))
