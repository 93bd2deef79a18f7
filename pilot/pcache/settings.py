"""What a queue configures of its node cache: where it is, how large it may grow, what it takes, and how a
hit reaches the job (a hard link or a copy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pilot import cachereport

LINK_MODES = ("auto", "hardlink", "copy")
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


@dataclass
class PcacheSettings:
    root: Path
    limit: str = "80%"  # bytes ("500000000", "20G") or a percentage of the cache's file system ("80%")
    hysteresis: float = 0.75  # when full, evict down to this fraction of the limit
    accept: tuple[str, ...] = ()  # glob patterns of cacheable source URLs (none: all)
    reject: tuple[str, ...] = ()  # glob patterns never cached (they win over accept)
    link: str = "auto"  # auto | hardlink | copy
    wait: float = 600.0  # s to wait for another pilot filling the same entry
    report_max: int = cachereport.MAX_NAMES  # names listed in a job request before the digest form

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.link not in LINK_MODES:
            raise ValueError(f"pcache_link={self.link!r}: expected one of {', '.join(LINK_MODES)}")
        if not 0 < self.hysteresis <= 1:
            raise ValueError(f"pcache_hysteresis={self.hysteresis}: expected a fraction in (0, 1]")
        parse_limit(self.limit)

    @classmethod
    def from_queue(cls, queue: Any) -> Optional[PcacheSettings]:
        """The queue's cache settings; None when the queue has no `pcache` directory."""
        if not getattr(queue, "pcache", ""):
            return None
        return cls(root=Path(queue.pcache), limit=queue.pcache_limit, hysteresis=queue.pcache_hysteresis,
                   accept=_patterns(queue.pcache_accept), reject=_patterns(queue.pcache_reject),
                   link=queue.pcache_link, wait=queue.pcache_wait, report_max=queue.pcache_report_max)


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


def parse_limit(text: str) -> tuple[str, float]:
    """'80%' -> ('percent', 80.0); '20G' -> ('bytes', 2e10)."""
    raw = str(text).strip().lower().removesuffix("b")
    try:
        if raw.endswith("%"):
            value = float(raw[:-1])
            if 0 < value <= 100:
                return "percent", value
        elif raw and raw[-1] in UNITS:
            value = float(raw[:-1]) * UNITS[raw[-1]]
            if value > 0:
                return "bytes", value
        elif float(raw) > 0:
            return "bytes", float(raw)
    except ValueError:
        pass
    raise ValueError(f"pcache_limit={text!r}: expected bytes (e.g. 20G) or a percentage of the disk (e.g. 80%)")
