"""The pilot's version tag: which code a factory's wrapper chose, and what that means for the jobs asked for.

A wrapper runs the production bundle (`PR`), a release candidate for a share of pilots (`RC`, `RCM`,
`ALRB`) or a development bundle for test pilots (`PT`), and passes the matching tag. A release candidate
must only ever run test jobs, so the tag decides the job label (prodSourceLabel) the pilot asks for; the
production tag keeps the label given on the command line. Every update carries the tag and the pilot's
version in pilotID, so the server shows which code ran each job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pilot import __version__


@dataclass(frozen=True)
class VersionTag:
    name: str
    label: Optional[str]  # the job label a pilot of this tag asks for; None: the one given
    keeps: frozenset[str] = frozenset()  # labels given on the command line that the tag leaves alone
    meaning: str = ""


TAGS: dict[str, VersionTag] = {t.name: t for t in (
    VersionTag("PR", None, meaning="production"),
    VersionTag("RC", "rc_test2", frozenset({"rc_test", "rc_test2", "ptest"}), "release candidate"),
    VersionTag("RCM", "rcm_test2", frozenset({"rcm_test2", "ptest"}), "release candidate, multi-core test jobs"),
    VersionTag("ALRB", "rc_alrb", meaning="release candidate of the release setup (ALRB) jobs"),
    VersionTag("PT", "ptest", meaning="development pilot: pilot test jobs"),
)}  # fmt: skip


def parse_tag(text: str) -> VersionTag:
    tag = TAGS.get(text.strip().upper())
    if tag is None:
        raise ValueError(f"unknown version tag {text!r} (known: {', '.join(TAGS)})")
    return tag


def job_label(tag: VersionTag, asked: str) -> str:
    """The prodSourceLabel a pilot with this tag asks for, given the one on its command line."""
    if tag.label is None or asked in tag.keeps:
        return asked
    return tag.label


def pilot_id_field(pilot_id: str, tag: VersionTag, version: str = __version__) -> str:
    """pilotID as the server stores it: `<pilot id>|<tag>|<version>` (the server keeps 200 characters)."""
    suffix = f"|{tag.name}|{version}"
    return pilot_id[: 200 - len(suffix)] + suffix
