"""Real-storage movers on loopback. Prints figures; never passes or fails.

  gfal2 root:// vs xrdcp   a 200 MB file put and got through the gfal mover and the xrootd mover (each
                           with its verification: adler32 checked by the tool, remote stat, rename), and
                           plain `xrdcp` alone for reference; medians, and the gfal/xrootd ratio
  rucio 1 MB               the rucio mover's upload (registered) and download by DID, per RSE: the whole
                           call as the pilot makes it (client interpreter start, API call, verification)
  rucio bulk               a job's 10 files of 100 kB each way on XRD_DISK: one client call for all
                           (`put_many` / `get_many`, what staging does with a bulk mover) against one call
                           per file

Needs XRootD, gfal2 and the Rucio venvs (.ci/provision-storage.sh as root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sitemovers.base import Expected, Move, MoverSettings  # noqa: E402
from sitemovers.checksum import file_checksum  # noqa: E402
from sitemovers.gfal import GfalSiteMover  # noqa: E402
from sitemovers.rucio import RucioSiteMover  # noqa: E402
from sitemovers.xrootd import XRootDSiteMover  # noqa: E402
from tests.servers import rucio, xrootd  # noqa: E402


def median_seconds(runs: int, action: Callable[[int], None]) -> tuple[float, float]:
    times = []
    for index in range(runs):
        started = time.perf_counter()
        action(index)
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(times)


def transfers(server: xrootd.XRootDServer, work: Path, size_mb: int, runs: int) -> None:
    source = work / "big.root"
    with open(source, "wb") as out:
        for _ in range(size_mb):
            out.write(os.urandom(1 << 20))
    checksum = file_checksum(source)
    expected = Expected(size_mb << 20, checksum, "", "big.root")
    area = server.data / "bench"
    area.mkdir()
    server.chown(area)
    rows = {}
    for name, mover in (("xrootd (xrdcp/xrdfs)", XRootDSiteMover()), ("gfal2 root://", GfalSiteMover())):
        tag = name.split()[0]

        def put(index: int, mover=mover, tag=tag) -> None:
            mover.put(source, server.root_url(area / f"{tag}-{index}"), Expected(size_mb << 20, None, "", "x"))

        def get(index: int, mover=mover, tag=tag) -> None:
            dest = work / f"got-{tag}-{index}"
            mover.get(server.root_url(area / f"{tag}-{index}"), dest, expected)
            dest.unlink()

        rows[tag] = (median_seconds(runs, put), median_seconds(runs, get))

    def plain(index: int) -> None:
        subprocess.run(["xrdcp", "--nopbar", "--silent", "--force", str(source),
                        server.root_url(area / f"plain-{index}")], check=True)

    def plain_get(index: int) -> None:
        subprocess.run(["xrdcp", "--nopbar", "--silent", "--force", server.root_url(area / f"plain-{index}"),
                        str(work / "plain-got")], check=True)

    rows["plain xrdcp"] = (median_seconds(runs, plain), median_seconds(runs, plain_get))
    print(f"\n{size_mb} MB over root:// on loopback, median (max) of {runs} runs, page cache warm")
    print(f"  {'':28} {'put s':>14} {'get s':>14} {'put MB/s':>9} {'get MB/s':>9}")
    for tag, ((put_s, put_max), (get_s, get_max)) in rows.items():
        print(f"  {tag:28} {put_s:7.3f} ({put_max:5.3f}) {get_s:7.3f} ({get_max:5.3f}) "
              f"{size_mb / put_s:9.0f} {size_mb / get_s:9.0f}")
    (gput, _), (gget, _) = rows["gfal2"]
    (xput, _), (xget, _) = rows["xrootd"]
    print(f"  ratio gfal2/xrootd mover: put {gput / xput:.2f}, get {gget / xget:.2f}")


def rucio_latency(server: rucio.RucioServer, work: Path, runs: int) -> None:
    source = work / "one-mb"
    source.write_bytes(os.urandom(1 << 20))
    checksum = file_checksum(source)
    setup = str(server.setup_script())
    mover = RucioSiteMover(MoverSettings(setup=setup, options={"rucio_register": True}))
    print(f"\nrucio mover, 1 MB, median (max) of {runs} runs (s)")
    print(f"  {'RSE':12} {'upload':>16} {'download':>16}")
    for rse in server.rses:
        def upload(index: int, rse=rse) -> None:
            mover.put(source, f"rucio://{rse}/tests/bench-{rse}-{index}.root", Expected(1 << 20, None, "", "x"))

        def download(index: int, rse=rse) -> None:
            dest = work / f"in-{rse}-{index}"
            mover.get(f"rucio://{rse}/tests/bench-{rse}-{index}.root", dest, Expected(1 << 20, checksum, "", "x"))
            dest.unlink()

        (up, up_max), (down, down_max) = median_seconds(runs, upload), median_seconds(runs, download)
        print(f"  {rse:12} {up:7.3f} ({up_max:6.3f}) {down:7.3f} ({down_max:6.3f})")


def rucio_bulk(server: rucio.RucioServer, work: Path, count: int = 10) -> None:
    mover = RucioSiteMover(MoverSettings(setup=str(server.setup_script()), options={"rucio_register": True}))
    sources = []
    for index in range(count):
        path = work / f"bulk-{index}"
        path.write_bytes(os.urandom(100_000))
        sources.append((path, file_checksum(path)))
    print(f"\nrucio mover, {count} files of 100 kB on XRD_DISK (s, total)")
    print(f"  {'':22} {'upload':>8} {'download':>9}")
    for label, bulk in (("one call per file", False), ("one call for all", True)):
        tag = "bulk" if bulk else "each"
        urls = [f"rucio://XRD_DISK/tests/bench-{tag}-{index}.root" for index in range(count)]
        puts = [Move(str(path), url, Expected(100_000, None, "", "x")) for (path, _), url in zip(sources, urls)]
        gets = [Move(url, str(work / f"in-{tag}-{index}"), Expected(100_000, checksum, "", "x"))
                for index, (url, (_, checksum)) in enumerate(zip(urls, sources))]
        started = time.monotonic()
        done = mover.put_many(puts) if bulk else [mover.put(Path(m.source), m.dest, m.expected) for m in puts]
        up = time.monotonic() - started
        started = time.monotonic()
        got = mover.get_many(gets) if bulk else [mover.get(m.source, Path(m.dest), m.expected) for m in gets]
        down = time.monotonic() - started
        failed = [outcome for outcome in [*done, *got] if isinstance(outcome, Exception)]
        print(f"  {label:22} {up:8.2f} {down:9.2f}" + (f"  ({len(failed)} failed: {failed[0]})" if failed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rucio-only", action="store_true", help="only the rucio figures")
    args = parser.parse_args()
    for missing in (xrootd.available(), rucio.available()):
        if missing:
            sys.exit(f"cannot run: {missing}")
    xrd = xrootd.launch()
    server = None
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        if not args.rucio_only:
            transfers(xrd, work, args.size_mb, args.runs)
        server = rucio.launch(xrd)
        rucio_latency(server, work, args.runs)
        rucio_bulk(server, work)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.base, ignore_errors=True)
        xrd.stop()
        shutil.rmtree(xrd.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
