"""A separate process using the node cache, as another pilot on the node would (driven by test_pcache.py).

    pcache_worker.py CACHE STORAGE WORKDIR LOG [HOLD] scope:lfn ...

Stages each file from STORAGE (a directory, through the local mover) into WORKDIR via the cache, and
appends one line per transfer to LOG ("fetch scope:lfn") and per file staged ("hit|miss scope:lfn").
With HOLD a directory (not "-"), the first transfer writes half its file, creates HOLD/filling, and
waits until HOLD/go exists (or forever, when the test means to kill the process there).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pilot.pcache import CacheKey, Pcache, PcacheSettings
from sitemovers.base import Expected
from sitemovers.local import LocalSiteMover


def log_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    cache, storage, workdir, logfile, hold = (Path(a) for a in argv[:5])
    link = os.environ.get("PCACHE_LINK", "hardlink")
    pcache = Pcache(PcacheSettings(root=cache, link=link, wait=300.0))
    mover = LocalSiteMover()
    workdir.mkdir(parents=True, exist_ok=True)
    for item in argv[5:]:
        scope, lfn = item.split(":", 1)
        source = storage / scope / lfn

        def fetch(path: Path, source: Path = source, item: str = item):
            log_line(logfile, f"fetch {item}")
            if str(hold) != "-" and not (hold / "go").exists():
                path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
                (hold / "filling").touch()
                while not (hold / "go").exists():
                    time.sleep(0.01)
            return mover.get(str(source), path, Expected(source.stat().st_size))

        staged = pcache.stage(CacheKey(scope, lfn), Expected(source.stat().st_size), workdir / lfn, fetch)
        if staged is None:
            log_line(logfile, f"uncached {item}")
            return 3
        log_line(logfile, f"{'hit' if staged.hit else 'miss'} {item}")
    pcache.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
