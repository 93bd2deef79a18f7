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
from pilot.errors import ErrorCode, PilotError
from pilot.job import FileSpec
from pilot.journal import Journal
from pilot.staging import StageItem, Stager
from sitemovers.base import (
    Direction,
    Expected,
    Failure,
    MoverSettings,
    Outcome,
    TransferError,
    is_partial,
    partial_name,
)
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
    family.place("data/in.root", DATA)
    settings = MoverSettings(**{**vars(family.hang_settings), "timeout": 1.0})
    err = failure_of(lambda: family.mover(settings).get(family.url("data/in.root"), local_dir / "in.root",
                                                        Expected(len(DATA))))
    assert err.failure is Failure.TIMEOUT
    assert os.listdir(local_dir) == []


def test_failing_setup_script(family, local_dir):
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
    family.place("out/keep", b"")
    with family.readonly():
        err = failure_of(lambda: family.mover().put(output(local_dir), family.url("out/out.root"),
                                                    Expected(len(DATA), guid=GUID)))
    assert err.failure is Failure.AUTH
    assert family.listing("out") == ["keep"]


def test_put_storage_out_of_space(family, local_dir):
    big = os.urandom(2 << 20)
    with family.full():
        err = failure_of(lambda: family.mover().put(output(local_dir, data=big), family.url("out/out.root"),
                                                    Expected(len(big), guid=GUID)))
        assert err.failure is Failure.NO_SPACE
        assert family.listing("out") == []


# --- recovery and many files ------------------------------------------------------------------------------
def test_remove_partials_touches_only_ours(family, local_dir):
    """What a dead pilot's puts left beside a destination goes; nothing else there, not even a name that
    merely looks like ours."""
    ours = sorted({partial_name("out.root"), partial_name("out.root")})
    others = sorted([".out.root.12345.part", partial_name("other.root"), "out.root.rucio.upload", ".out.root.part",
                     "out.root", "x.out.root." + "a" * 12 + ".part"])
    for name in ours + others:
        family.place(f"out/{name}", b"left over")
    removed = family.mover().remove_partials(family.url("out/out.root"))
    assert sorted(removed) == [family.url(f"out/{name}") for name in ours]
    assert family.listing("out") == others


def test_bulk_staging_keeps_per_file_outcomes(family, local_dir, tmp_path):
    """Three inputs (the last one corrupted) and two outputs (the second's destination holds another file)
    through the staging loop: each file has its own outcome and journal event, whether the mover moves
    them one by one or all in one call (`bulk`)."""
    stager = Stager(QueueConfig(name="Q", stagein_retries=1, stageout_retries=1, transfer_threads=2), Registry(),
                    threading.Event())
    stager.movers = lambda direction: [family.mover()]
    journal = Journal.create(local_dir, 1, 1, "Q", "node", {"PandaID": "1"})
    family.place("data/a.root", DATA)
    family.place("data/b.root", DATA[:500])
    family.place("data/c.root", DATA[:100] + b"X" + DATA[101:])
    inputs = [StageItem(FileSpec(name, "input"), family.url(f"data/{name}"), str(local_dir / name),
                        Expected(len(data), adler(data), lfn=name))
              for name, data in (("a.root", DATA), ("b.root", DATA[:500]), ("c.root", DATA))]
    with pytest.raises(PilotError) as failed_in:
        stager.transfer(Direction.IN, inputs, journal)
    assert failed_in.value.code == ErrorCode.GET_ADLER32_MISMATCH
    assert [journal.file_info("in", n) is not None for n in ("a.root", "b.root", "c.root")] == [True, True, False]
    assert (local_dir / "b.root").read_bytes() == DATA[:500]
    left = os.listdir(local_dir)
    assert "c.root" not in left and not [n for n in left if is_partial(n) or n.endswith(".d")], left

    family.place("out/taken.root", b"another job's file")
    outputs = [StageItem(FileSpec(name, "output", guid=GUID), str(output(local_dir, name, data)),
                         family.url(f"out/{name}"), Expected(None)) for name, data in (("new.root", DATA),
                                                                                        ("taken.root", DATA))]
    with pytest.raises(PilotError) as failed_out:
        stager.transfer(Direction.OUT, outputs, journal)
    assert failed_out.value.code == ErrorCode.FILE_EXISTS
    assert journal.file_info("out", "new.root") is not None and journal.file_info("out", "taken.root") is None
    assert family.read("out/new.root") == DATA and family.read("out/taken.root") == b"another job's file"
    assert family.listing("out") == ["new.root", "taken.root"]


def test_the_table_covers_every_contract_test_and_family():
    """tests/movers/matrix.py (the mover x test table) names each test of this suite and each family."""
    from tests.movers.conftest import FAMILIES
    from tests.movers.matrix import CASES, EXCLUDED, FAMILY_NAMES, table

    contract_tests = {name for name, value in globals().items()
                      if name.startswith("test_") and "family" in value.__code__.co_varnames}
    assert set(CASES) == contract_tests
    assert set(FAMILY_NAMES) == set(FAMILIES) and set(EXCLUDED) <= set(FAMILY_NAMES)
    cases = set(CASES.values())
    assert all(set(reasons) <= cases for reasons in EXCLUDED.values())
    assert table().count("\n| ") == len(CASES)  # a row per test, after the header
