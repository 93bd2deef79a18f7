"""The node cache's contents as a job request carries them, and the dispatcher's reading of it.

Two forms, both JSON objects, so that a request stays small whatever the cache holds:
  {"v": 1, "count": N, "bytes": B, "files": ["scope:lfn", ...]}                up to a cap of names
  {"v": 1, "count": N, "bytes": B, "bloom": {"bits": M, "hashes": K, "data": "<base64>"}}   above it

The digest is a Bloom filter over the same "scope:lfn" keys: a dispatcher asks it whether a job's input
is cached; a false "yes" (about 1 % at the default size) only makes a job look a little more attractive.
Nothing here touches the file system: the dispatcher side imports it too.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

VERSION = 1
MAX_BLOOM_BYTES = 64 * 1024  # the digest's cap, before base64
MAX_NAMES = 1000  # above this many files the digest form is sent


def key_text(scope: str, lfn: str) -> str:
    return f"{scope}:{lfn}"


def _positions(key: str, bits: int, hashes: int) -> list[int]:
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    first, second = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little") | 1
    return [(first + i * second) % bits for i in range(hashes)]


def build(files: Iterable[tuple[str, str, int]], max_names: int = MAX_NAMES,
          max_bloom_bytes: int = MAX_BLOOM_BYTES) -> dict[str, Any]:
    """The report for (scope, lfn, fsize) triples: the names when there are at most `max_names`, else a digest."""
    keys, total = [], 0
    for scope, lfn, fsize in files:
        keys.append(key_text(scope, lfn))
        total += int(fsize or 0)
    report: dict[str, Any] = {"v": VERSION, "count": len(keys), "bytes": total}
    if len(keys) <= max_names:
        report["files"] = sorted(keys)
        return report
    # about 9.6 bits per key gives 1 % false positives; the cap keeps the request small for a huge cache
    size = max(8, min(max_bloom_bytes, math.ceil(len(keys) * 9.6 / 8)))
    bits = size * 8
    hashes = max(1, min(16, round(bits / len(keys) * math.log(2))))
    field = bytearray(size)
    for key in keys:
        for pos in _positions(key, bits, hashes):
            field[pos >> 3] |= 1 << (pos & 7)
    report["bloom"] = {"bits": bits, "hashes": hashes, "data": base64.b64encode(bytes(field)).decode()}
    return report


@dataclass(frozen=True)
class CachedFiles:
    """A received report, asked `key in report`; an unreadable report holds nothing."""

    names: frozenset[str] = frozenset()
    bloom: Optional[bytes] = None
    bits: int = 0
    hashes: int = 0

    @classmethod
    def parse(cls, report: Any) -> CachedFiles:
        if not isinstance(report, dict) or report.get("v") != VERSION:
            return cls()
        files, bloom = report.get("files"), report.get("bloom")
        if isinstance(files, list):
            return cls(names=frozenset(name for name in files if isinstance(name, str)))
        if isinstance(bloom, dict):
            try:
                data = base64.b64decode(str(bloom.get("data", "")), validate=True)
                bits, hashes = int(bloom["bits"]), int(bloom["hashes"])
            except (ValueError, KeyError, TypeError):
                return cls()
            if 0 < bits <= len(data) * 8 and 0 < hashes <= 32:
                return cls(bloom=data, bits=bits, hashes=hashes)
        return cls()

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if self.bloom is None:
            return key in self.names
        return all(self.bloom[pos >> 3] & (1 << (pos & 7)) for pos in _positions(key, self.bits, self.hashes))

    def __bool__(self) -> bool:
        return bool(self.names) or self.bloom is not None
