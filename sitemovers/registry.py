"""Mover name -> class, from the entry point group "pilot.sitemovers" (plugins may add their own)."""

from __future__ import annotations

import logging
from importlib import import_module, metadata
from typing import Optional

from sitemovers.base import MoverSettings, SiteMover

log = logging.getLogger(__name__)

GROUP = "pilot.sitemovers"
# What this distribution ships, so a checkout that is not pip-installed still finds its own movers.
BUILTIN = {
    "local": "sitemovers.local:LocalSiteMover",
    "xrootd": "sitemovers.xrootd:XRootDSiteMover",
    "gfal": "sitemovers.gfal:GfalSiteMover",
    "rucio": "sitemovers.rucio:RucioSiteMover",
    "dq2": "sitemovers.rucio:RucioSiteMover",  # the lineage's name of the family Rucio succeeded
    "lsm": "sitemovers.local:LsmSiteMover",
    "castor": "sitemovers.castor:CastorSiteMover",
    "rfcp": "sitemovers.castor:RfcpLfcSiteMover",
}


class UnknownMover(LookupError):
    pass


def _entry_points() -> dict[str, str]:
    found = dict(BUILTIN)
    try:
        eps = metadata.entry_points()
        group = eps.select(group=GROUP) if hasattr(eps, "select") else eps.get(GROUP, [])
        for ep in group:
            found[ep.name] = ep.value
    except Exception as exc:  # a broken distribution must not stop the pilot
        log.warning("cannot read entry points of %s: %s", GROUP, exc)
    return found


class Registry:
    def __init__(self, extra: Optional[dict[str, type[SiteMover]]] = None) -> None:
        self._targets = _entry_points()
        self._classes: dict[str, type[SiteMover]] = dict(extra or {})

    def names(self) -> list[str]:
        return sorted(set(self._targets) | set(self._classes))

    def mover_class(self, name: str) -> type[SiteMover]:
        if name not in self._classes:
            target = self._targets.get(name)
            if target is None:
                raise UnknownMover(f"no site mover named {name!r} (known: {', '.join(self.names())})")
            module, _, attr = target.partition(":")
            self._classes[name] = getattr(import_module(module), attr)
        return self._classes[name]

    def create(self, name: str, settings: Optional[MoverSettings] = None) -> SiteMover:
        return self.mover_class(name)(settings)
