"""Shared helpers for the unit tests: a minimal valid job definition and a settable clock."""

from __future__ import annotations

from typing import Any

import pytest


def _job_dict(**overrides: Any) -> dict[str, str]:
    """A small valid job definition as the dispatcher sends it (strings, NULL for unset).
    Keyword arguments override or add fields; a value of None removes the field."""
    raw = {
        "PandaID": "4242",
        "attemptNr": "2",
        "transformation": "Reco_tf.py",
        "jobPars": "--inputFile in1.root --outputFile out1.root",
        "inFiles": "in1.root,in2.root",
        "GUID": "g-in1,g-in2",
        "fsize": "100,200",
        "checksum": "ad:0000abcd,md5:0123456789abcdef0123456789abcdef",
        "scopeIn": "mc16,data18",
        "dispatchDblock": "disp1,disp2",
        "realDatasetsIn": "ds.in1,ds.in2",
        "prodDBlockToken": "NULL,local",
        "ddmEndPointIn": "EP_A,EP_B",
        "outFiles": "out1.root,log.tgz",
        "realDatasets": "ds.out1,ds.log",
        "scopeOut": "mc16,mc16",
        "ddmEndPointOut": "EP_OUT,EP_LOG",
        "destinationDBlockToken": "ATLASDATADISK,NULL",
        "logFile": "log.tgz",
        "logGUID": "log-guid-1",
        "scopeLog": "mc16log",
        "prodSourceLabel": "managed",
    }
    for key, val in overrides.items():
        if val is None:
            raw.pop(key, None)
        else:
            raw[key] = val
    return raw


class FakeClock:
    """A clock the test moves by hand; callable like time.time."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def job_dict():
    """The builder of job definitions (a fixture, so test modules need not import conftest)."""
    return _job_dict


@pytest.fixture
def work(tmp_path):
    """An empty job work directory."""
    path = tmp_path / "work"
    path.mkdir()
    return path
