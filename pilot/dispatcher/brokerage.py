"""Cache-aware choice for the embedded dispatcher: among the jobs waiting, the one whose inputs the asking
node already holds (most bytes cached) goes first.

The node's report (pilot/cachereport.py) names its cached files as "scope:lfn", or gives their digest. A
job's inputs are the definition's comma lists `inFiles`, `scopeIn` and `fsize`, matched by position.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pilot.cachereport import CachedFiles, key_text

log = logging.getLogger(__name__)

MAX_CANDIDATES = 200  # job files looked at per request: a huge job directory costs no more than this


@dataclass(frozen=True)
class Choice:
    path: Path
    cached_bytes: int  # input bytes of this job already on the node
    considered: int  # job files looked at
    others: int  # of those, with some input cached


def _items(job: dict[str, Any], key: str) -> list[str]:
    text = str(job.get(key) or "")
    return [item.strip() for item in text.split(",")] if text and text.upper() != "NULL" else []


def cached_input_bytes(job: dict[str, Any], cached: CachedFiles) -> int:
    lfns, scopes, sizes = _items(job, "inFiles"), _items(job, "scopeIn"), _items(job, "fsize")
    total = 0
    for number, lfn in enumerate(lfns):
        scope = scopes[number] if number < len(scopes) else ""
        if not lfn or key_text(scope, lfn) not in cached:
            continue
        size = sizes[number] if number < len(sizes) else ""
        total += int(size) if size.isdigit() else 1  # a cached file of unknown size still counts
    return total


def prefer_cached(paths: Sequence[Path], cached: CachedFiles,
                  peek: Callable[[Path], Optional[dict[str, Any]]]) -> tuple[list[Path], Optional[Choice]]:
    """`paths` reordered: the first MAX_CANDIDATES by cached input bytes (most first, stable), then the rest.
    `peek` reads a job file (None when it cannot: such a file keeps its place). The Choice describes the
    first of the new order."""
    head, tail = list(paths[:MAX_CANDIDATES]), list(paths[MAX_CANDIDATES:])
    scores = {}
    for path in head:
        job = peek(path)
        scores[path] = cached_input_bytes(job, cached) if job is not None else 0
    head.sort(key=lambda path: -scores[path])
    if not head:
        return tail, None
    best = head[0]
    others = sum(1 for path in head[1:] if scores[path] > 0)
    return head + tail, Choice(best, scores[best], len(head), others)
