"""Where `pandapilot selftest`'s site movers check puts its input and finds its output, family by family: the test
site's own directory (plain paths, or file:// for a family that speaks only URLs), or the queue's own storage when
its `se` is remote, reached through the family under test, under a scope of its own whose files are removed
afterwards. A family that needs an `se` of a kind the queue does not have is not available (the reason says
which); a storage that cannot be reached is a StorageFailed with the mover's reason."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any, Optional

from pilot.config import QueueConfig
from pilot.job import FileSpec
from pilot.sitebuilder import Site, adler32
from pilot.staging import Stager
from sitemovers.base import Direction, Expected, SiteMover, TransferError
from sitemovers.checksum import Checksum
from sitemovers.registry import Registry, UnknownMover

STORAGE_KEYS = ("se", "sepath", "seprodpath", "copyprefix", "copyprefixin")
MOVER_KEYS = ("copytool", "copytoolin", "copytools", "copytoolsin", "copysetup", "copysetupin")


class StorageFailed(Exception):
    pass


def configured_movers(queue: dict[str, Any]) -> list[str]:
    """Every mover family the queue names, for either direction, in the queue's order."""
    config = QueueConfig.from_mapping("SELFTEST", {k: v for k, v in queue.items() if k in MOVER_KEYS})
    return list(dict.fromkeys([*config.movers("in"), *config.movers("out")])) or ["local"]


def mover_class(family: str) -> Optional[type[SiteMover]]:
    try:
        return Registry().mover_class(family)
    except (UnknownMover, ImportError):
        return None


def scheme(se: str) -> str:
    return se.partition("://")[0] if "://" in se else ""


def remote(se: str) -> bool:
    """A storage endpoint that is not a directory of this node (nor a file:// URL of one)."""
    return scheme(se) not in ("", "file")


def storage_unavailable(family: str, queue: dict[str, Any]) -> Optional[str]:
    """Why the family cannot be tried with this queue's storage settings; None when it can (an unknown
    family too: its check fails, saying so)."""
    mover = mover_class(family)
    if mover is None:
        return None
    se = str(queue.get("se") or "")
    speaks = ", ".join(f"{s}://" if s else "a directory" for s in mover.schemes)
    if remote(se):
        return None if scheme(se) in mover.schemes else \
            f"the queue's storage {se} is not one the {family} mover speaks ({speaks})"
    if "" in mover.schemes or "file" in mover.schemes:
        return None  # tried on the test site's own directory
    return f"the {family} mover needs a storage endpoint (se) of {speaks}; the queue has {se or 'none'}"


def storage_for(site: Site, family: str, queue: dict[str, Any]) -> SiteStorage:
    """The queue's storage when its `se` is remote, else the test site's own directory."""
    if remote(str(queue.get("se") or "")):
        return QueueStorage(site, family, queue)
    return SiteStorage(site, family)


def stored_at(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StorageFailed(f"output {path.name} not in storage: {exc.strerror}") from None


class SiteStorage:
    """Where the movers check puts its input and finds its output: the site's own directory."""

    scope = "scope"

    def __init__(self, site: Site, family: str) -> None:
        self.site = site
        self.where = "the test site's directory"
        if "" not in (mover_class(family) or SiteMover).schemes:  # a file:// family (gfal)
            site.queue_settings["se"] = f"file://{site.se}"
            self.where += " as file://"

    def put_input(self, name: str, data: bytes) -> dict[str, str]:
        return self.site.put_input(name, data, self.scope)

    def output(self, name: str) -> bytes:
        return stored_at(self.site.outputs / name)

    def clean(self, names: list[str]) -> None:
        pass  # the site's directory goes with the site


class QueueStorage(SiteStorage):
    """The queue's own storage, reached through the family under test, under a scope of its own."""

    def __init__(self, site: Site, family: str, queue: dict[str, Any]) -> None:
        self.site, self.family = site, family
        self.scope = f"selftest.{secrets.token_hex(6)}"
        site.queue_settings.update({k: queue.get(k, "") for k in (*STORAGE_KEYS, "copysetup", "copysetupin")})
        config = QueueConfig.from_mapping("SELFTEST", {k: v for k, v in site.queue_settings.items()
                                                       if k in (*STORAGE_KEYS, *MOVER_KEYS)})
        self.stager = Stager(config, Registry(), threading.Event())
        self.where = f"the queue's storage {config.se}"

    def url(self, name: str, kind: str) -> str:
        path = self.stager.queue.seprodpath if kind == "output" else ""
        return self.stager.url(FileSpec(name, kind, scope=self.scope), path)

    def mover(self, direction: Direction) -> SiteMover:
        return self.stager.movers(direction)[0]

    def put_input(self, name: str, data: bytes) -> dict[str, str]:
        local = self.site.root / name
        local.write_bytes(data)
        checksum = Checksum("adler32", adler32(data))
        try:
            self.mover(Direction.IN).put(local, self.url(name, "input"), Expected(len(data), checksum, lfn=name))
        except (TransferError, OSError) as exc:
            raise StorageFailed(f"the {self.family} mover cannot put a file into {self.where}: {exc}") from None
        return {"lfn": name, "fsize": str(len(data)), "checksum": f"ad:{checksum.value}", "scope": self.scope}

    def output(self, name: str) -> bytes:
        local = self.site.root / f"fetched-{name}"
        try:
            self.mover(Direction.OUT).get(self.url(name, "output"), local, Expected(lfn=name))
        except (TransferError, OSError) as exc:
            raise StorageFailed(f"output {name} cannot be read back from {self.where}: {exc}") from None
        return local.read_bytes()

    def clean(self, names: list[str]) -> None:
        mover = self.mover(Direction.OUT)
        for name, kind in ((n, k) for n in names for k in ("input", "output")):
            try:
                mover.remove(self.url(name, kind))
            except (TransferError, OSError):
                pass  # left under the test's own scope
