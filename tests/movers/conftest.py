"""The per-family fixture providers of the mover contract suite (tests/movers/test_contract.py).

Every test of the suite runs once per family listed in FAMILIES. A family is a `Family`: how to build
its mover, where its storage lives, and how to place, read and list files there *without* the mover
(straight on the storage's own terms), so that the tests can check what really landed.

Adding a family (e.g. xrootd against the server on loopback):
1. write a fixture `family_<name>(tmp_path, ...) -> Family` here (or in a module imported here), using
   the session-scoped server fixture of that family; skip with a reason when the server cannot run;
2. add `"<name>"` to FAMILIES and to tests/movers/matrix.py (FAMILY_NAMES).
Optional capabilities: `hang_settings` (MoverSettings under which the mover's tool hangs, for the
timeout and cancel tests: e.g. a setup script that puts a hanging tool first in PATH), `failing_setup`
(settings whose setup script fails), `readonly` and `full` (context managers making the storage refuse
writes / run out of space). A case a family cannot provoke is not generated for it: its reason goes in
tests/movers/matrix.py (EXCLUDED), which also prints the mover x test table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from sitemovers.base import MoverSettings, SiteMover
from sitemovers.castor import CastorSiteMover, RfcpLfcSiteMover
from sitemovers.local import LocalSiteMover, LsmSiteMover
from tests.movers.matrix import families_for

TOOLS = Path(__file__).resolve().parents[2] / "sitemovers" / "tools"
STANDINS = Path(__file__).resolve().parents[1] / "standins"


@dataclass
class Family:
    name: str
    make: Callable[[MoverSettings], SiteMover]
    url: Callable[[str], str]  # storage URL of a relative name
    place: Callable[[str, bytes], None]  # put bytes at the storage, not through the mover
    read: Callable[[str], Optional[bytes]]  # the bytes at the storage (None: absent)
    listing: Callable[[str], list[str]]  # names in a storage directory (relative)
    hang_settings: Optional[MoverSettings] = None
    failing_setup: Optional[MoverSettings] = None
    readonly: Optional[Callable[[], contextlib.AbstractContextManager]] = None
    full: Optional[Callable[[], contextlib.AbstractContextManager]] = None

    def mover(self, settings: Optional[MoverSettings] = None) -> SiteMover:
        return self.make(settings or MoverSettings())


def directory_family(name: str, root: Path, make: Callable[[MoverSettings], SiteMover],
                     url: Callable[[str], str]) -> Family:
    """A family whose storage is (or is backed by) the directory `root`."""
    root.mkdir(parents=True, exist_ok=True)

    def place(rel: str, data: bytes) -> None:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def read(rel: str) -> Optional[bytes]:
        target = root / rel
        return target.read_bytes() if target.is_file() else None

    def listing(rel: str) -> list[str]:
        target = root / rel
        return sorted(os.listdir(target)) if target.is_dir() else []

    return Family(name, make, url, place, read, listing, readonly=lambda: read_only(root),
                  full=lambda: small_tmpfs(root))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` as a read-only bind mount of itself (root only): writes fail with EROFS."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[None]:
    """A 1 MB tmpfs mounted over `path` (root only): the storage runs out of space."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "pilot-test-full", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def hanging_tool_settings(tmp_path: Path, *tools: str) -> MoverSettings:
    """A setup script that puts tools which hang (and have a child that would outlive them) first in PATH."""
    bindir = tmp_path / "hanging-bin"
    bindir.mkdir(exist_ok=True)
    for tool in tools:
        script = bindir / tool
        script.write_text("#!/bin/sh\nsleep 600 &\nwait\n")
        script.chmod(0o755)
    setup = tmp_path / "hang-setup.sh"
    setup.write_text(f'export PATH="{bindir}:$PATH"\n')
    return MoverSettings(setup=str(setup))


def failing_setup_settings(tmp_path: Path) -> MoverSettings:
    setup = tmp_path / "broken-setup.sh"
    setup.write_text("echo 'site setup: grid client area not mounted' >&2\nreturn 1\n")
    return MoverSettings(setup=str(setup))


# --- the families -------------------------------------------------------------------------------------
def family_local(tmp_path: Path) -> Family:
    root = tmp_path / "se"
    return directory_family("local", root, LocalSiteMover, lambda rel: f"file://{root}/{rel}")


def family_lsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Family:
    monkeypatch.setenv("PATH", f"{TOOLS}:{os.environ.get('PATH', '')}")
    if shutil.which("lsm-get") is None:
        pytest.skip("the lsm tools are not executable here")
    root = tmp_path / "se"
    family = directory_family("lsm", root, LsmSiteMover, lambda rel: str(root / rel))
    family.hang_settings = hanging_tool_settings(tmp_path, "lsm-get", "lsm-put")
    family.failing_setup = failing_setup_settings(tmp_path)
    return family


CASTOR_BASE = "/castor/cern.ch/grid/atlas/test"


def family_castor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mover: type[SiteMover] = CastorSiteMover,
                  name: str = "castor") -> Family:
    """The stand-in CASTOR (tests/standins): files placed are on tape and staged in the default class."""
    monkeypatch.setenv("PATH", f"{STANDINS}:{os.environ.get('PATH', '')}")
    castor = tmp_path / "castor"
    monkeypatch.setenv("CASTOR_STANDIN_ROOT", str(castor))
    monkeypatch.setenv("LFC_STANDIN_ROOT", str(tmp_path / "lfc"))
    (tmp_path / "lfc").mkdir()
    ns = castor / "ns" / CASTOR_BASE.lstrip("/")
    family = directory_family(name, ns, mover, lambda rel: f"{CASTOR_BASE}/{rel}")
    plain_place = family.place

    def place(rel: str, data: bytes) -> None:
        plain_place(rel, data)
        staged = castor / "pool" / "default" / CASTOR_BASE.lstrip("/") / rel
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(data)

    family.place = place
    family.hang_settings = hanging_tool_settings(tmp_path, "rfcp")
    family.failing_setup = failing_setup_settings(tmp_path)
    return family


FAMILIES = {
    "local": lambda request, tmp_path: family_local(tmp_path),
    "lsm": lambda request, tmp_path: family_lsm(tmp_path, request.getfixturevalue("monkeypatch")),
    "castor": lambda request, tmp_path: family_castor(tmp_path, request.getfixturevalue("monkeypatch")),
    "rfcp": lambda request, tmp_path: family_castor(tmp_path, request.getfixturevalue("monkeypatch"),
                                                    RfcpLfcSiteMover, "rfcp"),
}


def _storage_families() -> dict:
    from tests.movers.storage_families import STORAGE_FAMILIES  # real servers: tests/servers/

    return STORAGE_FAMILIES


FAMILIES.update(_storage_families())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each contract test runs over the families that can provoke its case (tests/movers/matrix.py)."""
    if "family" in metafunc.fixturenames:
        metafunc.parametrize("family", families_for(metafunc.function.__name__, sorted(FAMILIES)), indirect=True)


@pytest.fixture
def family(request, tmp_path) -> Family:
    return FAMILIES[request.param](request, tmp_path)


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty job work directory."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def job_dict():
    from tests.unit.conftest import _job_dict

    return _job_dict
