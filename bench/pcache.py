"""Node cache (pcache) figures. Prints figures; never passes or fails.

  (a) stage-in of a 1,000-file job from a warm cache, through the staging loop (goal <= 1 s in all)
  (b) scan of a cache of 100,000 entries from its index, and the job request's report of it (goal <= 2 s)
  (c) 20 jobs sharing inputs across 4 concurrent pilots on one node: hits, misses, bytes saved
"""

from __future__ import annotations

import argparse
import json
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
from pilot.dispatcher.local import LocalDispatcher  # noqa: E402
from pilot.job import parse_job  # noqa: E402
from pilot.journal import Journal  # noqa: E402
from pilot.pcache import CacheKey, Pcache, PcacheSettings  # noqa: E402
from pilot.staging import Stager  # noqa: E402
from sitemovers.registry import Registry  # noqa: E402


def adler(data: bytes) -> str:
    return f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def job_definition(panda_id: int, files: list[tuple[str, bytes]], scope: str = "bench") -> dict[str, str]:
    log = f"{panda_id}.log.tgz"
    return {
        "PandaID": str(panda_id), "attemptNr": "1", "transformation": "/bin/sh",
        "jobPars": "-c true", "prodSourceLabel": "managed",
        "inFiles": ",".join(name for name, _ in files), "fsize": ",".join(str(len(d)) for _, d in files),
        "checksum": ",".join(adler(d) for _, d in files), "scopeIn": ",".join(scope for _ in files),
        "GUID": ",".join(f"g-{name}" for name, _ in files),
        "outFiles": log, "logFile": log, "logGUID": f"log-{panda_id}", "scopeOut": "bench", "scopeLog": "bench",
        "realDatasets": "ds.log", "destinationDblock": "ds.log",
    }  # fmt: skip


def stage_in_once(queue: QueueConfig, cache: Pcache, raw: dict[str, str], workdir: Path) -> float:
    from pilot.pcache import CacheHook

    workdir.mkdir(parents=True)
    job = parse_job(raw)
    journal = Journal.create(workdir, job.panda_id, job.attempt_nr, queue.name, "bench", raw)
    hook = CacheHook(cache)
    stager = Stager(queue, Registry(), threading.Event(), hooks=[hook])
    begin = time.perf_counter()
    try:
        stager.stage_in(job, workdir, journal)
    finally:
        hook.release()
    return time.perf_counter() - begin


def warm_stage_in(base: Path, files: int, size: int, link: str) -> None:
    se = base / "se"
    (se / "bench").mkdir(parents=True)
    inputs = [(f"EVNT.{i:06d}.pool.root", (b"%06d" % i) * (size // 6)) for i in range(files)]
    for name, data in inputs:
        (se / "bench" / name).write_bytes(data)
    queue = QueueConfig.from_mapping("BENCH", {"se": str(se), "pcache": str(base / "pcache"), "pcache_link": link})
    settings = PcacheSettings.from_queue(queue)
    assert settings is not None
    cache = Pcache(settings)
    raw = job_definition(1, inputs)
    cold = stage_in_once(queue, cache, raw, base / "cold")
    warm = [stage_in_once(queue, cache, raw, base / f"warm{n}") for n in range(5)]
    counters = cache.counters()
    print(f"(a) stage-in of {files} files of {size} B, link={link}: cold (all misses) {cold:.2f} s; "
          f"warm cache median {statistics.median(warm):.3f} s (min {min(warm):.3f}, max {max(warm):.3f}), "
          f"{statistics.median(warm) / files * 1000:.2f} ms/file; goal <= 1 s "
          f"[hits {counters['hits']}, misses {counters['misses']}]")
    cache.close()


def scan(base: Path, entries: int) -> None:
    cache = Pcache(PcacheSettings(root=base / "pcache-scan"))
    now = time.time()
    rows = [(CacheKey("mc16_13TeV", f"EVNT.{i:08d}.pool.root.1").digest, "mc16_13TeV", f"EVNT.{i:08d}.pool.root.1",
             f"g-{i}", 2_000_000 + i, "ad:00000001", "complete", now, now + i) for i in range(entries)]
    with cache.index.transaction() as db:  # the rows of a full cache (the scan reads only the index)
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    times, reports = [], []
    for _ in range(5):
        begin = time.perf_counter()
        listed = cache.scan()
        times.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        report = cache.report()
        reports.append(time.perf_counter() - begin)
    size = len(json.dumps(report))
    print(f"(b) scan of {len(listed)} entries from the index: median {statistics.median(times):.3f} s; "
          f"scan + job-request report (digest, {size / 1024:.0f} KiB as JSON): median "
          f"{statistics.median(reports):.3f} s; goal <= 2 s")
    cache.close()


def shared_inputs(base: Path, jobs: int, pilots: int, pool: int, per_job: int, size: int) -> None:
    jobdir, se, work = base / "jobs", base / "se", base / "work"
    (se / "bench").mkdir(parents=True)
    LocalDispatcher(jobdir)
    inputs = [(f"AOD.{i:04d}.root", bytes([65 + i % 26]) * size) for i in range(pool)]
    for name, data in inputs:
        (se / "bench" / name).write_bytes(data)
    wanted = 0
    for n in range(jobs):
        files = [inputs[(n * 3 + k) % pool] for k in range(per_job)]
        wanted += sum(len(d) for _, d in files)
        (jobdir / f"{1000 + n}.json").write_text(json.dumps(job_definition(1000 + n, files)))
    queue = base / "queue.yaml"
    queue.write_text(f"se: {se}\nseprodpath: out\npcache: {base / 'pcache'}\n")
    argv = [sys.executable, "-m", "pilot", "--log-level", "WARNING", "run", "--queue", "BENCH", "--dispatcher",
            str(jobdir), "--queue-config", str(queue), "--max-no-job", "1", "--no-job-wait", "0"]
    begin = time.perf_counter()
    procs = [subprocess.Popen([*argv, "--workdir", str(work / f"p{i}")], cwd=base) for i in range(pilots)]
    codes = [proc.wait() for proc in procs]
    elapsed = time.perf_counter() - begin
    cache = Pcache(PcacheSettings(root=base / "pcache"))
    counters = cache.counters()
    chosen = [json.loads(line) for line in (jobdir / "history" / "brokerage.jsonl").read_text().splitlines()]
    preferred = sum(1 for record in chosen if record["cached_input_bytes"] > 0)
    print(f"(c) {jobs} jobs x {per_job} inputs of {size // 2**20} MiB from a pool of {pool}, {pilots} concurrent "
          f"pilots (exit codes {codes}), {elapsed:.1f} s: {counters['hits']} hits, {counters['misses']} misses "
          f"(transfers), {counters['uncached']} uncached; {counters['bytes_saved'] / 2**20:.0f} MiB saved of "
          f"{wanted / 2**20:.0f} MiB asked for; {preferred}/{len(chosen)} jobs chosen for inputs already cached")
    cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--link", default="hardlink", choices=("hardlink", "copy"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pcache-") as tmp:
        base = Path(tmp)
        warm_stage_in(base / "a", args.files, 4096, args.link)
        scan(base / "b", args.entries)
        shared_inputs(base / "c", jobs=20, pilots=4, pool=12, per_job=4, size=4 * 2**20)


if __name__ == "__main__":
    main()
