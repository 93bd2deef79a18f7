"""Transfer-layer figures, side by side in one run. Prints figures; never passes or fails.

  (a) stage-in of one big file (default 1 GiB) by the local mover (copy + adler32 + verify), against
      `cp`, `cp` followed by a separate zlib.adler32 pass, and a zlib.adler32 pass alone
      goal: within 1.2x of max(cp, adler32 alone)
  (b) stage-out of the same file (copy + adler32, fsync, remote stat, rename) against `cp` + fsync
      goal: within 1.2x of cp + fsync
  (c) adler32 throughput of sitemovers.checksum.file_checksum against a plain zlib.adler32 loop
      goal: >= 0.9x
  (d) per-file overhead of a stage-in of 1,000 and 10,000 small files through Stager (journal included)
      goal: <= 2 ms per file, flat from 1,000 to 10,000

Files live under --dir (default: a temporary directory in /tmp, so the file is in the page cache and an
fsync reaches the disk); medians of --repeat runs.

  python bench/movers.py [--size-mb 1024] [--repeat 5] [--dir DIR] [--small 1000,10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pilot.config import QueueConfig  # noqa: E402
from pilot.fsutil import fsync_dir  # noqa: E402 - opens read-only and fsyncs: works on a file too
from pilot.job import parse_job  # noqa: E402
from pilot.journal import Journal  # noqa: E402
from pilot.staging import Stager  # noqa: E402
from sitemovers.base import Expected  # noqa: E402
from sitemovers.checksum import CHUNK, file_checksum  # noqa: E402
from sitemovers.local import LocalSiteMover  # noqa: E402
from sitemovers.registry import Registry  # noqa: E402


def medians(variants: dict, repeat: int, before) -> dict[str, float]:
    """Each variant timed `repeat` times, the variants interleaved round by round (a loaded machine
    then slows them alike); the median of each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, action in variants.items():
            before()
            start = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def zlib_pass(path: Path) -> str:
    value = 1
    buf = bytearray(4 * CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while True:
            length = handle.readinto(buf)
            if not length:
                break
            value = zlib.adler32(view[:length], value)
    return f"{value & 0xFFFFFFFF:08x}"


def big_file(root: Path, size_mb: int) -> Path:
    source = root / "big.root"
    block = os.urandom(1 << 20)
    with open(source, "wb") as handle:
        for _ in range(size_mb):
            handle.write(block)
    zlib_pass(source)  # into the page cache
    return source


def bench_big(root: Path, size_mb: int, repeat: int) -> None:
    source = big_file(root, size_mb)
    size = source.stat().st_size
    checksum = file_checksum(source)
    dest = root / "work"
    dest.mkdir()
    target = dest / "big.root"

    def clear() -> None:
        for path in (target, root / "se" / "big.root"):
            if path.exists():
                path.unlink()

    (root / "se").mkdir()
    mover = LocalSiteMover()
    out_url = f"file://{root}/se/big.root"
    t = medians({
        "cp": lambda: subprocess.run(["cp", str(source), str(target)], check=True),
        "cp_adler": lambda: (subprocess.run(["cp", str(source), str(target)], check=True), zlib_pass(target)),
        "adler_alone": lambda: zlib_pass(source),
        "stage_in": lambda: mover.get(str(source), target, Expected(size, checksum)),
        "cp_fsync": lambda: (subprocess.run(["cp", str(source), str(target)], check=True), fsync_dir(target)),
        "stage_out": lambda: mover.put(source, out_url, Expected(size)),
        "ours": lambda: file_checksum(source),
    }, repeat, clear)
    cp, cp_adler, adler_alone, stage_in = t["cp"], t["cp_adler"], t["adler_alone"], t["stage_in"]
    cp_fsync, stage_out, ours = t["cp_fsync"], t["stage_out"], t["ours"]
    clear()
    gib = size / 2**30
    print(f"(a) stage-in of {gib:.2f} GiB (medians of {repeat}, page cache)")
    print(f"    cp                      {cp:7.3f} s")
    print(f"    cp + adler32 pass       {cp_adler:7.3f} s")
    print(f"    adler32 alone           {adler_alone:7.3f} s")
    print(f"    local mover stage-in    {stage_in:7.3f} s   = {stage_in / max(cp, adler_alone):.2f}x "
          f"max(cp, adler32 alone)   (goal <= 1.2x)")
    print(f"(b) stage-out of {gib:.2f} GiB")
    print(f"    cp + fsync              {cp_fsync:7.3f} s")
    print(f"    local mover stage-out   {stage_out:7.3f} s   = {stage_out / cp_fsync:.2f}x cp + fsync   (goal <= 1.2x)")
    print("(c) adler32 throughput on the cached file")
    print(f"    zlib.adler32 loop       {size / adler_alone / 2**20:7.0f} MiB/s")
    print(f"    file_checksum           {size / ours / 2**20:7.0f} MiB/s   = {adler_alone / ours:.2f}x"
          "   (goal >= 0.9x)")


def bench_small(root: Path, counts: list[int]) -> None:
    print("(d) per-file overhead of a stage-in of many small files (Stager, local mover, journal)")
    for count in counts:
        base = root / f"small-{count}"
        se, work = base / "se", base / "work"
        (se / "s").mkdir(parents=True)
        work.mkdir()
        names, sums = [], []
        for n in range(count):
            data = f"file {n}\n".encode() * 10
            name = f"f{n:06d}.root"
            (se / "s" / name).write_bytes(data)
            names.append(name)
            sums.append(f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}")
        sizes = [str(len(f"file {n}\n".encode() * 10)) for n in range(count)]
        nulls = ",".join(["NULL"] * count)
        job = parse_job({"PandaID": "1", "attemptNr": "1", "transformation": "x", "jobPars": "",
                         "inFiles": ",".join(names), "GUID": nulls, "fsize": ",".join(sizes),
                         "checksum": ",".join(sums), "scopeIn": ",".join(["s"] * count), "dispatchDblock": nulls,
                         "realDatasetsIn": nulls, "prodDBlockToken": nulls, "ddmEndPointIn": nulls,
                         "outFiles": "log.tgz", "logFile": "log.tgz", "realDatasets": "NULL",
                         "destinationDBlockToken": "NULL", "scopeOut": "s", "ddmEndPointOut": "NULL"})
        journal = Journal.create(work, 1, 1, "Q", "node", {"PandaID": "1"})
        stager = Stager(QueueConfig(name="Q", se=str(se)), Registry(), threading.Event())
        start = time.perf_counter()
        stager.stage_in(job, work, journal)
        journal.reach("staged_in")
        seconds = time.perf_counter() - start
        print(f"    {count:6d} files           {seconds:7.2f} s   {seconds / count * 1000:6.3f} ms/file"
              "   (goal <= 2 ms)")
        shutil.rmtree(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--small", default="1000,10000")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-movers-", dir=args.dir))
    try:
        print(f"files under {root}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
        if args.size_mb:
            bench_big(root, args.size_mb, args.repeat)
        counts = [int(c) for c in args.small.split(",") if c]
        if counts:
            bench_small(root, counts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
