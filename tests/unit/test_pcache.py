"""pcache: hits and misses, separate processes sharing one cache, eviction, corruption, crashes, names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

from pilot import cachereport
from pilot.pcache import CacheKey, EntryLock, Pcache, PcacheSettings, parse_limit
from sitemovers.base import Expected, Failure, TransferError, TransferResult
from sitemovers.checksum import Checksum
from sitemovers.local import LocalSiteMover

WORKER = Path(__file__).with_name("pcache_worker.py")


def adler(data: bytes) -> Checksum:
    return Checksum("adler32", f"{zlib.adler32(data) & 0xFFFFFFFF:08x}")


class Storage:
    """A directory of files as storage, with a fetch that counts transfers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fetches: list[str] = []

    def add(self, scope: str, lfn: str, data: bytes) -> tuple[CacheKey, Expected]:
        (self.root / scope).mkdir(parents=True, exist_ok=True)
        (self.root / scope / lfn).write_bytes(data)
        return CacheKey(scope, lfn), Expected(len(data), adler(data))

    def fetcher(self, key: CacheKey, expected: Expected):
        def fetch(path: Path) -> TransferResult:
            self.fetches.append(key.lfn)
            return LocalSiteMover().get(str(self.root / key.scope / key.lfn), path, expected)

        return fetch


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "storage")


def make_cache(tmp_path: Path, **settings) -> Pcache:
    settings.setdefault("link", "hardlink")
    return Pcache(PcacheSettings(root=tmp_path / "pcache", **settings))


def stage(cache: Pcache, storage: Storage, key: CacheKey, expected: Expected, dest: Path):
    dest.parent.mkdir(parents=True, exist_ok=True)
    return cache.stage(key, expected, dest, storage.fetcher(key, expected))


def test_miss_then_hit_links_the_cached_file(tmp_path, storage):
    cache = make_cache(tmp_path)
    key, expected = storage.add("mc16", "a.root", b"A" * 1000)
    first = stage(cache, storage, key, expected, tmp_path / "job1" / "a.root")
    second = stage(cache, storage, key, expected, tmp_path / "job2" / "a.root")
    assert storage.fetches == ["a.root"]
    assert (first.hit, second.hit) == (False, True)
    assert second.linked and second.checksum == expected.checksum
    one, two = os.stat(first.path), os.stat(second.path)
    assert one.st_ino == two.st_ino and one.st_mode & 0o777 == 0o444
    assert (tmp_path / "job2" / "a.root").read_bytes() == b"A" * 1000
    counters = cache.counters()
    assert (counters["hits"], counters["misses"], counters["bytes_saved"]) == (1, 1, 1000)
    assert cache.scan() == [("mc16", "a.root", 1000)]


def test_a_failed_fetch_leaves_nothing(tmp_path, storage):
    cache = make_cache(tmp_path)
    key, expected = storage.add("s", "f", b"x" * 10)

    def broken(path: Path) -> TransferResult:
        path.write_bytes(b"half")
        raise TransferError(Failure.FAILED, "connection dropped")

    with pytest.raises(TransferError):
        cache.stage(key, expected, tmp_path / "f", broken)
    assert cache.scan() == [] and cache.used_bytes() == 0
    assert not list((tmp_path / "pcache" / "data").glob("*/*.fill"))
    assert stage(cache, storage, key, expected, tmp_path / "f").hit is False


def test_a_different_version_of_the_file_is_fetched_again(tmp_path, storage):
    cache = make_cache(tmp_path)
    key, expected = storage.add("s", "f", b"old")
    stage(cache, storage, key, expected, tmp_path / "j1" / "f")
    key, expected = storage.add("s", "f", b"new!")
    staged = stage(cache, storage, key, expected, tmp_path / "j2" / "f")
    assert staged.hit is False and (tmp_path / "j2" / "f").read_bytes() == b"new!"
    assert cache.scan() == [("s", "f", 4)]


def test_corrupted_entry_is_evicted_and_fetched_again(tmp_path, storage):
    cache = make_cache(tmp_path)
    key, expected = storage.add("s", "f.root", b"good data " * 50)
    first = stage(cache, storage, key, expected, tmp_path / "j1" / "f.root")
    os.chmod(first.path, 0o644)  # a payload of the pilot's own uid undoes the protection and writes
    with open(first.path, "r+b") as handle:
        handle.write(b"BAD!")
    staged = stage(cache, storage, key, expected, tmp_path / "j2" / "f.root")
    assert staged.hit is False and storage.fetches == ["f.root", "f.root"]
    assert (tmp_path / "j2" / "f.root").read_bytes() == b"good data " * 50
    assert cache.counters()["corrupted"] == 1
    truncated = cache._paths(key)[0]
    os.chmod(truncated, 0o644)
    truncated.write_bytes(b"short")  # a size that no longer matches
    assert stage(cache, storage, key, expected, tmp_path / "j3" / "f.root").hit is False
    assert cache.counters()["corrupted"] == 2


def test_eviction_is_lru_and_spares_entries_in_use(tmp_path, storage):
    cache = make_cache(tmp_path, limit="3000", hysteresis=0.5)
    keys = [storage.add("s", name, name.encode() * 1000) for name in "abc"]
    for n, (key, expected) in enumerate(keys):
        stage(cache, storage, key, expected, tmp_path / f"j{n}" / key.lfn)
    stage(cache, storage, *keys[1], tmp_path / "again" / "b")  # b is now more recent than c
    in_use = EntryLock(cache._paths(keys[0][0])[2])  # a pilot linking a (the least recently used)
    assert in_use.acquire(exclusive=False)
    try:
        key_d, expected_d = storage.add("s", "d", b"d" * 1000)
        assert stage(cache, storage, key_d, expected_d, tmp_path / "j4" / "d").hit is False
    finally:
        in_use.release()
    # 4000 > 3000: evict down to 1500 - the 1000 of d: a is in use, c is older than b
    assert sorted(lfn for _s, lfn, _n in cache.scan()) == ["a", "d"]
    assert cache.counters()["evictions"] == 2
    assert (tmp_path / "j2" / "c").read_bytes() == b"c" * 1000  # a job's link outlives the eviction


def test_cache_full_with_nothing_evictable_runs_uncached(tmp_path, storage):
    cache = make_cache(tmp_path, limit="1500")
    key, expected = storage.add("s", "a", b"a" * 1000)
    stage(cache, storage, key, expected, tmp_path / "j1" / "a")
    held = EntryLock(cache._paths(key)[2])
    assert held.acquire(exclusive=False)
    try:
        key_b, expected_b = storage.add("s", "b", b"b" * 1000)
        assert stage(cache, storage, key_b, expected_b, tmp_path / "j2" / "b") is None
    finally:
        held.release()
    assert storage.fetches == ["a"] and cache.counters()["uncached"] == 1
    assert cache.scan() == [("s", "a", 1000)] and cache.used_bytes() == 1000


def test_accept_and_reject_patterns(tmp_path):
    cache = make_cache(tmp_path, accept=("file:///data/*", "*.root"), reject=("*.lib.tgz",))
    assert cache.cacheable("file:///data/mc16/x.pool")
    assert cache.cacheable("root://se/x.root")
    assert not cache.cacheable("file:///data/user/user.lib.tgz")
    assert not cache.cacheable("root://se/x.pool")


def test_limits_parse():
    assert parse_limit("80%") == ("percent", 80.0)
    assert parse_limit("20G") == ("bytes", 2e10)
    assert parse_limit("1500") == ("bytes", 1500.0)
    for bad in ("0", "-5", "101%", "lots", ""):
        with pytest.raises(ValueError):
            parse_limit(bad)
    with pytest.raises(ValueError):
        PcacheSettings(root=Path("/x"), link="symlink")


def test_hostile_names_never_escape_the_cache(tmp_path, storage):
    cache = make_cache(tmp_path)
    (tmp_path / "job").mkdir()
    names = [("..", "..%2Fpasswd"), ("../../etc", "passwd"), ("s", "/abs/path"), ("s", "a\nb"), ("s", "x" * 255)]
    for scope, lfn in names:
        key, data = CacheKey(scope, lfn), b"hostile " + lfn.encode()
        expected = Expected(len(data), adler(data))

        def fetch(path: Path, data: bytes = data) -> TransferResult:
            path.write_bytes(data)
            return TransferResult(str(path), len(data), adler(data))

        assert cache.stage(key, expected, tmp_path / "job" / "input", fetch) is not None
    root = (tmp_path / "pcache").resolve()
    made = [p for p in root.rglob("*")]
    assert all(p.resolve().is_relative_to(root) for p in made)
    names_on_disk = {p.name for p in (root / "data").rglob("*") if p.is_file()}
    assert all(len(name.split(".")[0]) == 64 for name in names_on_disk)
    assert sorted(cache.scan()) == sorted((s, f, len(b"hostile " + f.encode())) for s, f in names)
    assert not (tmp_path / "etc").exists() and not Path("/abs/path").exists()


def test_payload_as_root_gets_a_copy_and_cannot_change_the_cache(tmp_path, storage):
    cache = Pcache(PcacheSettings(root=tmp_path / "pcache", link="auto"), payload_as_root=True)
    key, expected = storage.add("s", "in.root", b"pristine" * 100)
    staged = stage(cache, storage, key, expected, tmp_path / "job" / "in.root")
    assert not staged.linked
    with open(tmp_path / "job" / "in.root", "r+b") as handle:  # the payload writes into its input
        handle.write(b"scribble")
    again = stage(cache, storage, key, expected, tmp_path / "job2" / "in.root")
    assert again.hit and (tmp_path / "job2" / "in.root").read_bytes() == b"pristine" * 100
    assert cache.counters()["corrupted"] == 0


def test_payload_under_another_uid_gets_a_read_only_link(storage):
    """A payload running as another (non-root) uid cannot write its hard-linked input."""
    base = Path(tempfile.mkdtemp(prefix="pcache-uid-"))
    try:
        os.chmod(base, 0o755)
        cache = Pcache(PcacheSettings(root=base / "pcache", link="auto"), payload_as_root=False)
        storage.root = base / "storage"
        key, expected = storage.add("s", "in.root", b"pristine" * 100)
        (base / "job").mkdir(mode=0o777)
        staged = stage(cache, storage, key, expected, base / "job" / "in.root")
        assert staged.linked and os.stat(staged.path).st_mode & 0o777 == 0o444
        writer = ["dd", f"of={staged.path}", "conv=notrunc", "status=none"]  # writes into the file in place
        as_other = {"user": 65534, "group": 65534} if os.geteuid() == 0 else {}
        proc = subprocess.run(writer, input=b"scribble", capture_output=True, **as_other)
        assert proc.returncode != 0 and b"Permission denied" in proc.stderr
        again = stage(cache, storage, key, expected, base / "job2" / "in.root")
        assert again.hit and again.path.read_bytes() == b"pristine" * 100
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_cache_on_another_file_system_copies(tmp_path, storage):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the cache needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        cache = Pcache(PcacheSettings(root=mount / "pcache", link="hardlink"))
        key, expected = storage.add("s", "x.root", b"across" * 500)
        first = stage(cache, storage, key, expected, tmp_path / "j1" / "x.root")
        second = stage(cache, storage, key, expected, tmp_path / "j2" / "x.root")
        assert (first.linked, second.linked, second.hit) == (False, False, True)
        assert second.path.read_bytes() == b"across" * 500 and second.checksum == expected.checksum
        assert os.stat(second.path).st_ino != os.stat(cache._paths(key)[0]).st_ino
        cache.close()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def worker(tmp_path: Path, storage: Storage, number: int, items: list[str], hold: str = "-") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "pcache"), str(storage.root),
                             str(tmp_path / f"work{number}"), str(tmp_path / "log"), hold, *items])


def test_concurrent_processes_transfer_each_file_once(tmp_path, storage):
    files = {f"f{i}.root": bytes([65 + i]) * (5000 + i) for i in range(6)}
    for lfn, data in files.items():
        storage.add("mc16", lfn, data)
    items = [f"mc16:{lfn}" for lfn in files]
    hold = tmp_path / "hold"
    hold.mkdir()
    first = worker(tmp_path, storage, 0, items, str(hold))
    wait_for(hold / "filling", first)  # the first process is filling f0 and holds its entry
    others = [worker(tmp_path, storage, number, items) for number in (1, 2, 3)]
    (hold / "go").touch()
    assert [p.wait(timeout=120) for p in [first, *others]] == [0, 0, 0, 0]
    lines = (tmp_path / "log").read_text().split("\n")
    for item in items:
        assert lines.count(f"fetch {item}") == 1
        assert lines.count(f"miss {item}") == 1 and lines.count(f"hit {item}") == 3
    for i in range(4):
        for lfn, data in files.items():
            assert (tmp_path / f"work{i}" / lfn).read_bytes() == data


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until the worker created `path` (it is blocked there) or ended."""
    while not path.exists():
        try:
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"worker ended ({proc.returncode}) before {path.name}")


def test_a_process_killed_while_filling_leaves_nothing_taken_for_complete(tmp_path, storage):
    key, expected = storage.add("mc16", "big.root", b"Z" * 100_000)
    hold = tmp_path / "hold"
    hold.mkdir()
    filler = worker(tmp_path, storage, 0, ["mc16:big.root"], str(hold))
    wait_for(hold / "filling", filler)
    filler.send_signal(signal.SIGKILL)
    filler.wait()
    cache = make_cache(tmp_path)
    assert cache.scan() == []  # the half-written entry is not reported
    staged = stage(cache, storage, key, expected, tmp_path / "after" / "big.root")
    assert staged.hit is False and storage.fetches == ["big.root"]
    assert staged.path.read_bytes() == b"Z" * 100_000
    assert cache.scan() == [("mc16", "big.root", 100_000)]
    assert not list((tmp_path / "pcache" / "data").glob("*/*.fill"))


def test_report_lists_names_then_a_digest(tmp_path, storage):
    cache = make_cache(tmp_path, report_max=3)
    for i in range(3):
        key, expected = storage.add("s", f"f{i}", b"x" * 10)
        stage(cache, storage, key, expected, tmp_path / "j" / f"f{i}")
    report = cache.report()
    assert report == {"v": 1, "count": 3, "bytes": 30, "files": ["s:f0", "s:f1", "s:f2"]}
    key, expected = storage.add("s", "f3", b"x" * 10)
    stage(cache, storage, key, expected, tmp_path / "j" / "f3")
    digest = cache.report()
    assert "files" not in digest and digest["count"] == 4
    seen = cachereport.CachedFiles.parse(digest)
    assert all(f"s:f{i}" in seen for i in range(4))


def test_digest_of_a_large_cache_is_small_and_mostly_right():
    files = [("mc16", f"EVNT.{i:06d}.pool.root", 1000) for i in range(100_000)]
    report = cachereport.build(files)
    assert len(report["bloom"]["data"]) <= 90_000
    seen = cachereport.CachedFiles.parse(report)
    assert all(cachereport.key_text(s, f) in seen for s, f, _ in files[:1000])
    false = sum(f"other:{i}" in seen for i in range(2000))
    assert false < 2000 * 0.15
    assert not cachereport.CachedFiles.parse({"v": 1, "bloom": {"bits": 10**9, "hashes": 3, "data": "AA=="}})
    assert not cachereport.CachedFiles.parse("junk") and not cachereport.CachedFiles.parse({"v": 2, "files": []})


def free(cache: Pcache, key: CacheKey) -> bool:
    """Whether nobody holds the entry (taken exclusively and let go at once)."""
    lock = EntryLock(cache._paths(key)[2])
    taken = lock.acquire(exclusive=True)
    lock.release()
    return taken


def hook_item(storage: Storage, key: CacheKey, expected: Expected, dest: Path):
    from types import SimpleNamespace

    spec = SimpleNamespace(scope=key.scope, lfn=key.lfn)
    return SimpleNamespace(spec=spec, source=f"file://{storage.root}/{key.scope}/{key.lfn}", dest=str(dest),
                           expected=expected)


def test_hook_looks_up_before_the_get_and_fills_after_it(tmp_path, storage):
    from pilot.pcache import CacheHook
    from sitemovers.base import Outcome

    cache = make_cache(tmp_path)
    key, expected = storage.add("s", "h.root", b"hooked" * 100)
    (tmp_path / "j1").mkdir()
    hook = CacheHook(cache)
    item = hook_item(storage, key, expected, tmp_path / "j1" / "h.root")
    assert hook.before_get(item) is None  # a miss: the entry is now held for this get
    assert not EntryLock(cache._paths(key)[2]).acquire(exclusive=False)  # others wait for it
    storage.fetcher(key, expected)(Path(item.dest))  # the mover's get
    hook.after_get(item, Path(item.dest))
    assert free(cache, key)
    (tmp_path / "j2").mkdir()
    hit = hook.before_get(hook_item(storage, key, expected, tmp_path / "j2" / "h.root"))
    assert hit.outcome is Outcome.FROM_CACHE and hit.fsize == 600 and hit.checksum == expected.checksum
    assert Path(hit.location).read_bytes() == b"hooked" * 100


def test_hook_lets_go_of_entries_whose_get_failed(tmp_path, storage):
    from pilot.pcache import CacheHook

    cache = make_cache(tmp_path)
    key, expected = storage.add("s", "fails.root", b"x" * 100)
    (tmp_path / "j").mkdir()
    hook = CacheHook(cache)
    assert hook.before_get(hook_item(storage, key, expected, tmp_path / "j" / "fails.root")) is None
    hook.release()  # the stage-in ended without an after_get for it
    assert free(cache, key)
    assert cache.scan() == [] and cache.used_bytes() == 0


def test_hook_leaves_rejected_sources_alone(tmp_path, storage):
    from pilot.pcache import CacheHook

    cache = make_cache(tmp_path, reject=("*.lib.tgz",))
    key, expected = storage.add("s", "user.lib.tgz", b"lib")
    hook = CacheHook(cache)
    item = hook_item(storage, key, expected, tmp_path / "user.lib.tgz")
    assert hook.before_get(item) is None
    hook.after_get(item, Path(item.dest))
    assert cache.scan() == [] and cache.counters()["misses"] == 0


def test_a_fill_killed_before_its_rename_is_not_taken_for_complete(tmp_path, storage):
    """What a pilot killed between writing the entry and publishing it leaves: a '.fill' file (here with
    the whole content) and a row still 'filling'. The next pilot fetches the file again."""
    cache = make_cache(tmp_path)
    key, expected = storage.add("s", "late.root", b"L" * 5000)
    data, fill, _ = cache._paths(key)
    data.parent.mkdir(parents=True, exist_ok=True)
    fill.write_bytes(b"L" * 5000)
    with cache.index.transaction() as db:
        db.execute("INSERT INTO entries VALUES (?, 's', 'late.root', '', 5000, NULL, 'filling', 0, 0)", (key.digest,))
    assert cache.scan() == [] and cache.report()["count"] == 0
    staged = stage(cache, storage, key, expected, tmp_path / "j" / "late.root")
    assert staged.hit is False and storage.fetches == ["late.root"]
    assert not fill.exists() and data.read_bytes() == b"L" * 5000
    assert cache.scan() == [("s", "late.root", 5000)]
