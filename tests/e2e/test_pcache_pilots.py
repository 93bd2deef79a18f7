"""The node cache under real pilots: concurrent pilot processes on one node sharing it, a payload writing
into a cached input, a cache with no room, and the embedded dispatcher's cache-aware choice."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pilot.errors import ExitCode
from pilot.pcache import CacheKey, Pcache, PcacheSettings
from tests.e2e.conftest import Site


def checked(files: list[tuple[dict[str, str], bytes]]) -> str:
    """A payload that fails unless every input in its work dir holds exactly the expected bytes."""
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {spec['lfn']}\\n" for spec, data in files)
    return f"printf '{lines}' | sha256sum -c --quiet -"


def cache_of(site: Site) -> Pcache:
    return Pcache(PcacheSettings(root=site.root / "pcache"))


def metrics(site: Site, panda_id: int) -> dict[str, str]:
    text = site.final(panda_id).get("job_metrics", "")
    return dict(item.split("=", 1) for item in text.split())


@pytest.fixture
def cached_site(tmp_path: Path) -> Site:
    return Site(tmp_path, {"pcache": str(tmp_path / "pcache")})


def test_concurrent_pilots_transfer_each_file_once(cached_site: Site, started) -> None:
    site = cached_site
    pool = [(site.put_input(f"in{n}.dat", bytes([48 + n]) * (20_000 + n)), bytes([48 + n]) * (20_000 + n))
            for n in range(4)]
    jobs = {}
    for n in range(8):
        files = [pool[(n + k) % 4] for k in range(3)]
        jobs[100 + n] = files
        site.add_job(100 + n, script=checked(files), inputs=tuple(spec for spec, _ in files))
    for number in range(4):
        started.append(site.start("--workdir", str(site.root / f"work{number}")))
    codes = [proc.wait(timeout=300) for proc in started]
    assert set(codes) <= {ExitCode.OK, ExitCode.NO_JOBS} and ExitCode.OK in codes  # a late pilot may find none
    for panda_id in jobs:
        assert site.final(panda_id)["job_status"] == "finished", site.final(panda_id)
    counters = cache_of(site).counters()
    assert counters["misses"] == 4  # one transfer per distinct file
    assert counters["hits"] == 8 * 3 - 4 and counters["uncached"] == 0
    assert sum(int(metrics(site, panda_id).get("filesFromCache", 0)) for panda_id in jobs) == counters["hits"]


@pytest.mark.parametrize("link", ["auto", "hardlink"])
def test_a_payload_writing_into_its_cached_input_does_not_change_the_cache(tmp_path: Path, link: str) -> None:
    site = Site(tmp_path, {"pcache": str(tmp_path / "pcache"), "pcache_link": link})
    data = b"pristine input " * 1000
    spec = site.put_input("shared.dat", data)
    site.add_job(1, script="printf scribble 1<> shared.dat", inputs=(spec,))  # writes in place, if it may
    site.add_job(2, script=checked([(spec, data)]), inputs=(spec,))
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr[-2000:]
    assert site.final(2)["job_status"] == "finished"
    cache = cache_of(site)
    counters = cache.counters()
    written_through = link == "hardlink" and os.geteuid() == 0  # root writes a 0444 file it shares
    assert counters["corrupted"] == (1 if written_through else 0)
    assert (counters["hits"], counters["misses"]) == ((0, 2) if written_through else (1, 1))
    assert cache._paths(CacheKey("scope", "shared.dat"))[0].read_bytes() == data


def test_a_cache_with_no_room_still_runs_the_job(tmp_path: Path) -> None:
    site = Site(tmp_path, {"pcache": str(tmp_path / "pcache"), "pcache_limit": "1000"})
    data = b"too big for the cache " * 100
    spec = site.put_input("big.dat", data)
    site.add_job(1, script=checked([(spec, data)]), inputs=(spec,))
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr[-2000:]
    assert site.final(1)["job_status"] == "finished"
    cache = cache_of(site)
    assert cache.counters()["uncached"] == 1 and cache.scan() == [] and cache.used_bytes() == 0


def test_the_pilot_is_given_the_job_whose_inputs_its_node_holds(cached_site: Site) -> None:
    site = cached_site
    warm = site.put_input("warm.dat", b"w" * 50_000)
    cold = site.put_input("cold.dat", b"c" * 50_000)
    site.add_job(1, inputs=(warm,))
    assert site.run("--max-jobs", "1").returncode == ExitCode.OK  # the node now holds warm.dat
    site.add_job(2, inputs=(cold,))  # first in the usual order
    site.add_job(3, inputs=(warm,))
    assert site.run("--max-jobs", "1").returncode == ExitCode.OK
    assert site.history(3) and not site.history(2)
    records = [json.loads(line) for line in (site.jobs / "history" / "brokerage.jsonl").read_text().splitlines()]
    # the first request reported an empty cache: no choice to record
    assert [(int(r["PandaID"]), r["cached_input_bytes"]) for r in records] == [(3, 50_000)]
    assert metrics(site, 3).get("filesFromCache") == "1"
