"""What the staging loop moves and what it hands back: a file to move (`StageItem`, what the hooks see),
a file moved (`Transferred`, as the journal records it), and the hooks' protocol (`StagingHooks`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from pilot.job import FileSpec
from sitemovers.base import Expected, Outcome, TransferResult
from sitemovers.checksum import Checksum


@dataclass
class Transferred:
    lfn: str
    fsize: int
    checksum: Optional[Checksum]
    location: str  # local path (in), SURL (out), TURL (direct)
    outcome: Outcome = Outcome.COPIED


@dataclass
class StageItem:
    """One file of one transfer: what the hooks see."""

    spec: FileSpec
    source: str  # in: the storage URL; out: the local path
    dest: str  # in: the local path; out: the storage URL
    expected: Expected


class StagingHooks(Protocol):
    def before_get(self, item: StageItem) -> Optional[TransferResult]: ...

    def after_get(self, item: StageItem, path: Path) -> None: ...


def journal_info(result: TransferResult) -> dict[str, Any]:
    """A file's event in the journal."""
    return {"fsize": result.fsize, "checksum": str(result.checksum or ""), "location": result.location,
            "outcome": result.outcome.value}


def from_journal(lfn: str, info: dict[str, Any]) -> Transferred:
    checksum = Checksum.parse(info["checksum"]) if info.get("checksum") else None
    outcome = Outcome(info.get("outcome") or Outcome.COPIED.value)
    return Transferred(lfn, int(info["fsize"]), checksum, str(info["location"]), outcome)
