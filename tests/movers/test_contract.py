"""The mover contract: one set of tests, run over every family of conftest.FAMILIES.

get, put, missing source, size and checksum mismatch (a truncated or corrupted source), cancel, timeout
(the whole tool's process group killed), hostile name, no partial file left anywhere, a destination
that holds a different file (never overwritten), the same file already there (already done), permission
denied, storage out of space, failing setup script.
"""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

import pytest

from pilot.config import QueueConfig
from pilot.job import FileSpec
from pilot.journal import Journal
from pilot.staging import StageItem, Stager
from sitemovers.base import Direction, Expected, Failure, MoverSettings, Outcome, TransferError
from sitemovers.checksum import Checksum
from sitemovers.registry import Registry

DATA = b"event data " * 3000
HOSTILE = "a b;$(touch pwned)'\"%20#?&*.root"
GUID = "5d3c0c1e-0b5a-4e1f-9d59-6a3e2f1c0b7a"


def adler(data: bytes) -> Checksum:
    return Checksum("adler32", f"{zlib.adler32(data) & 0xFFFFFFFF:08x}")


def failure_of(call) -> TransferError:
    with pytest.raises(TransferError) as info:
        call()
    return info.value


@pytest.fixture
def local_dir(tmp_path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def skip_unless(family, what: str, capability) -> None:
    if capability is None:
        pytest.skip(family.skip_reasons.get(what, f"{family.name} has no way to provoke this here"))


# --- get --------------------------------------------------------------------------------------------------
def test_get(family, local_dir):
    family.place("data/in.root", DATA)
    result = family.mover().get(family.url("data/in.root"), local_dir / "in.root", Expected(len(DATA), adler(DATA)))
    assert (local_dir / "in.root").read_bytes() == DATA
    assert (result.fsize, result.checksum, result.outcome) == (len(DATA), adler(DATA), Outcome.COPIED)
    assert os.listdir(local_dir) == ["in.root"]


def test_get_missing_source(family, local_dir):
    err = failure_of(lambda: family.mover().get(family.url("data/absent.root"), local_dir / "x", Expected()))
    assert err.failure is Failure.NOT_FOUND
    assert os.listdir(local_dir) == []


def test_get_size_mismatch_truncated_source(family, local_dir):
    family.place("data/in.root", DATA[:-100])  # a truncated copy at the storage
    err = failure_of(lambda: family.mover().get(family.url("data/in.root"), local_dir / "in.root",
                                                Expected(len(DATA), adler(DATA))))
    assert err.failure is Failure.SIZE_MISMATCH
    assert os.listdir(local_dir) == []


def test_get_checksum_mismatch_corrupted_source(family, local_dir):
    corrupted = DATA[:100] + b"X" + DATA[101:]
    family.place("data/in.root", corrupted)
    err = failure_of(lambda: family.mover().get(family.url("data/in.root"), local_dir / "in.root",
                                                Expected(len(DATA), adler(DATA))))
    assert err.failure is Failure.CHECKSUM_MISMATCH and err.checksum_kind == "adler32"
    assert os.listdir(local_dir) == []


def test_get_hostile_name(family, local_dir):
    skip_unless(family, "hostile", None if "hostile" in family.skip_reasons else True)
    family.place(f"data/{HOSTILE}", DATA)
    family.mover().get(family.url(f"data/{HOSTILE}"), local_dir / HOSTILE, Expected(len(DATA), adler(DATA)))
    assert (local_dir / HOSTILE).read_bytes() == DATA
    assert os.listdir(local_dir) == [HOSTILE] and not Path("pwned").exists()


def test_get_cancelled(family, local_dir):
    family.place("data/in.root", DATA)
    cancel = threading.Event()
    cancel.set()
    err = failure_of(lambda: family.mover().get(family.url("data/in.root"), local_dir / "in.root",
                                                Expected(len(DATA)), cancel))
    assert err.failure is Failure.CANCELLED
    assert os.listdir(local_dir) == []


def test_get_timeout_kills_the_tool(family, local_dir):
    skip_unless(family, "timeout", family.hang_settings)
    family.place("data/in.root", DATA)
    settings = MoverSettings(**{**vars(family.hang_settings), "timeout": 1.0})
    err = failure_of(lambda: family.mover(settings).get(family.url("data/in.root"), local_dir / "in.root",
                                                        Expected(len(DATA))))
    assert err.failure is Failure.TIMEOUT
    assert os.listdir(local_dir) == []


def test_failing_setup_script(family, local_dir):
    skip_unless(family, "setup", family.failing_setup)
    family.place("data/in.root", DATA)
    err = failure_of(lambda: family.mover(family.failing_setup).get(family.url("data/in.root"),
                                                                    local_dir / "in.root", Expected()))
    assert err.failure is Failure.SETUP and err.failure.another_mover_may_help
    assert os.listdir(local_dir) == []


# --- put --------------------------------------------------------------------------------------------------
def output(local_dir: Path, name: str = "out.root", data: bytes = DATA) -> Path:
    path = local_dir / name
    path.write_bytes(data)
    return path


def test_put(family, local_dir):
    url = family.url("out/mc16/out.root")
    result = family.mover().put(output(local_dir), url, Expected(len(DATA), guid=GUID))
    assert family.read("out/mc16/out.root") == DATA
    assert (result.location, result.fsize, result.checksum) == (url, len(DATA), adler(DATA))
    assert family.listing("out/mc16") == ["out.root"]  # no temporary name left


def test_put_size_mismatch(family, local_dir):
    err = failure_of(lambda: family.mover().put(output(local_dir), family.url("out/out.root"),
                                                Expected(len(DATA) + 1, guid=GUID)))
    assert err.failure is Failure.SIZE_MISMATCH
    assert family.listing("out") == []


def test_put_checksum_mismatch(family, local_dir):
    err = failure_of(lambda: family.mover().put(output(local_dir), family.url("out/out.root"),
                                                Expected(len(DATA), adler(b"something else"), guid=GUID)))
    assert err.failure is Failure.CHECKSUM_MISMATCH
    assert family.listing("out") == []


def test_put_hostile_name(family, local_dir):
    skip_unless(family, "hostile", None if "hostile" in family.skip_reasons else True)
    family.mover().put(output(local_dir, HOSTILE), family.url(f"out/{HOSTILE}"), Expected(len(DATA), guid=GUID))
    assert family.read(f"out/{HOSTILE}") == DATA
    assert family.listing("out") == [HOSTILE] and not Path("pwned").exists()


def test_put_cancelled(family, local_dir):
    cancel = threading.Event()
    cancel.set()
    err = failure_of(lambda: family.mover().put(output(local_dir), family.url("out/out.root"),
                                                Expected(len(DATA), guid=GUID), cancel))
    assert err.failure is Failure.CANCELLED
    assert family.listing("out") == []


def test_put_timeout_kills_the_tool(family, local_dir):
    skip_unless(family, "timeout", family.hang_settings)
    settings = MoverSettings(**{**vars(family.hang_settings), "timeout": 1.0})
    err = failure_of(lambda: family.mover(settings).put(output(local_dir), family.url("out/out.root"),
                                                        Expected(len(DATA), guid=GUID)))
    assert err.failure is Failure.TIMEOUT
    assert family.listing("out") == []


def test_put_never_overwrites_a_different_file(family, local_dir):
    family.place("out/out.root", b"the input of another job")
    err = failure_of(lambda: family.mover().put(output(local_dir), family.url("out/out.root"),
                                                Expected(len(DATA), guid=GUID)))
    assert err.failure is Failure.EXISTS
    assert family.read("out/out.root") == b"the input of another job"
    assert family.listing("out") == ["out.root"]


def test_put_already_done_through_staging(family, local_dir, tmp_path):
    """The same file already at the destination (a pilot that died after the rename, before its
    journal): staging counts it as already done, whether the mover can stat or refuses by itself."""
    family.place("out/out.root", DATA)
    stager = Stager(QueueConfig(name="Q", stageout_retries=1, transfer_threads=1), Registry(), threading.Event())
    stager.movers = lambda direction: [family.mover()]
    journal = Journal.create(local_dir, 1, 1, "Q", "node", {"PandaID": "1"})
    item = StageItem(FileSpec("out.root", "output", guid="g"), str(output(local_dir)), family.url("out/out.root"),
                     Expected(None))
    done = stager.transfer(Direction.OUT, [item], journal)
    assert done[0].outcome is Outcome.ALREADY_DONE
    assert family.read("out/out.root") == DATA and family.listing("out") == ["out.root"]


def test_put_permission_denied(family, local_dir):
    skip_unless(family, "readonly", family.readonly)
    family.place("out/keep", b"")
    with family.readonly():
        err = failure_of(lambda: family.mover().put(output(local_dir), family.url("out/out.root"),
                                                    Expected(len(DATA), guid=GUID)))
    assert err.failure is Failure.AUTH
    assert family.listing("out") == ["keep"]


def test_put_storage_out_of_space(family, local_dir):
    skip_unless(family, "full", family.full)
    big = os.urandom(2 << 20)
    with family.full():
        err = failure_of(lambda: family.mover().put(output(local_dir, data=big), family.url("out/out.root"),
                                                    Expected(len(big), guid=GUID)))
        assert err.failure is Failure.NO_SPACE
        assert family.listing("out") == []
