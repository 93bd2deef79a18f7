"""The log tarball of a job with a large text stdout: time and size by gzip level and by the stdout kept.
Prints figures.

  python bench/tarball.py [--mb 500] [--levels 1,6,9] [--keep 0,100]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.layout import JobDir  # noqa: E402
from pilot.report import make_log_tarball  # noqa: E402


def write_stdout(path: Path, mb: int) -> None:
    """Payload-like text: log lines with timestamps, counters and measured values (a 4 MB block repeated:
    gzip's window is 32 kB, so the repetition does not help it)."""
    rng = random.Random(1)
    lines = []
    for i in range(40000):
        lines.append(f"12:{i // 3600 % 60:02d}:{i % 60:02d}.{rng.randrange(1000):03d} {rng.choice(LEVELS)} "
                     f"{rng.choice(SOURCES):<24} event {i * 7919 % 1000003} run {300000 + i % 17}: "
                     f"E={rng.uniform(0, 1e4):.4f} GeV eta={rng.uniform(-2.5, 2.5):+.3f} "
                     f"phi={rng.uniform(-3.1416, 3.1416):+.4f} id=0x{rng.getrandbits(48):012x}\n")
    data = "".join(lines).encode()
    with open(path, "wb") as handle:
        written = 0
        while written < mb * 2**20:
            handle.write(data)
            written += len(data)


LEVELS = ("INFO   ", "DEBUG  ", "WARNING", "VERBOSE")
SOURCES = ("AthenaEventLoopMgr", "TrigDecisionTool", "MuonSegmentMaker", "JetCalibTool", "EventSelector",
           "CaloCellMaker", "InDetTrackFinder", "xAODMaker::EventInfo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=500, help="size of the payload's stdout, MB")
    parser.add_argument("--levels", default="1,6,9")
    parser.add_argument("--keep", default="0,100", help="MB of stdout kept in the tarball (0: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tarball-") as tmp:
        dirs = JobDir(Path(tmp))
        dirs.payload.mkdir()
        dirs.pilot_log.write_text("pilot log\n")
        write_stdout(dirs.stdout, args.mb)
        size = dirs.stdout.stat().st_size
        print(f"log tarball of a job with {size / 2**20:.0f} MB of text stdout")
        print(f"{'level':>5} {'stdout kept':>12} {'time':>8} {'tarball':>10}")
        for keep in (int(k) for k in args.keep.split(",")):
            for level in (int(v) for v in args.levels.split(",")):
                begin = time.perf_counter()
                tarball = make_log_tarball(dirs, "bench.log.tgz", level=level, stdout_max=keep << 20)
                elapsed = time.perf_counter() - begin
                kept = f"{keep} MB" if keep else "all"
                print(f"{level:>5} {kept:>12} {elapsed:7.2f}s {tarball.stat().st_size / 2**20:7.1f} MB")


if __name__ == "__main__":
    main()
