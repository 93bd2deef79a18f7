"""The file stager against the real XRootD: file N+1 arrives while the payload works on file N, each file
is removed when its turn is over, and a failed fetch stops the run with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from pilot.config import QueueConfig
from pilot.filestager import StagedFile, StagerList, read_list, write_list
from pilot.journal import Journal
from pilot.layout import FILESTAGER_LIST
from pilot.staging import Stager
from sitemovers.registry import Registry
from tests.servers.xrootd import XRootDServer
from tests.storage.conftest import one_file_job

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# The payload: record the file it was given, then wait (bounded) until the NEXT file has arrived, which
# only happens if the stager fetches it while this file is being processed.
PAYLOAD = r"""
import json, os, sys, time, zlib
path, record, following = sys.argv[1], sys.argv[2], sys.argv[3:]
data = open(path, 'rb').read()
entry = {'name': os.path.basename(path), 'adler32': '%08x' % (zlib.adler32(data) & 0xffffffff),
         'present': sorted(n for n in os.listdir(os.path.dirname(path)) if not n.startswith('.'))}
names = [n for n in following]
me = names.index(entry['name'])
if me + 1 < len(names):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(os.path.dirname(path), names[me + 1])):
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.01)
    entry['next_arrived'] = True
with open(record, 'a') as out:
    out.write(json.dumps(entry) + '\n')
"""


def upload(server: XRootDServer, count: int) -> tuple[Path, list[StagedFile], dict[str, str]]:
    area = server.data / "stager"
    area.mkdir(exist_ok=True)
    server.chown(area)
    files, sums = [], {}
    for index in range(count):
        name = f"in{index}.root"
        data = os.urandom(300_000 + index)
        (area / name).write_bytes(data)
        sums[name] = f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
        files.append(StagedFile(name, server.root_url(area / name), len(data), f"ad:{sums[name]}"))
    return area, files, sums


def run_stager(tmp_path: Path, stager_list: StagerList, names: list[str]) -> subprocess.CompletedProcess:
    listing, work, record = tmp_path / "filestager.json", tmp_path / "work", tmp_path / "record.jsonl"
    work.mkdir()
    write_list(listing, stager_list)
    argv = [sys.executable, "-m", "pilot.filestager", "--list", str(listing), "--dir", str(work), "--",
            sys.executable, "-c", PAYLOAD, "{}", str(record), *names]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_next_file_arrives_during_the_current_one_and_each_is_removed(xrootd_server, tmp_path):
    _, files, sums = upload(xrootd_server, 3)
    names = [f.lfn for f in files]
    done = run_stager(tmp_path, StagerList("xrootd", files), names)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == names
    assert all(r["adler32"] == sums[r["name"]] for r in records)
    assert [r.get("next_arrived", False) for r in records] == [True, True, False]
    assert all(len(r["present"]) <= 2 for r in records)  # never more than the current and the next
    assert records[1]["present"][0] == "in1.root" and "in0.root" not in records[1]["present"]
    assert os.listdir(tmp_path / "work") == []  # each removed after its turn


def test_a_missing_file_stops_with_one_line(xrootd_server, tmp_path):
    _, files, _ = upload(xrootd_server, 1)
    files.append(StagedFile("gone.root", xrootd_server.root_url(xrootd_server.data / "stager" / "gone.root")))
    done = run_stager(tmp_path, StagerList("xrootd", files), [files[0].lfn])  # the payload waits for none
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "gone.root" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.listdir(tmp_path / "work") == []


def test_a_hostile_list_is_refused(tmp_path):
    listing = tmp_path / "filestager.json"
    listing.write_text(json.dumps({"copytool": "xrootd", "files": [{"lfn": "../../etc/passwd", "url": "root://x//y"}]}))
    done = subprocess.run([sys.executable, "-m", "pilot.filestager", "--list", str(listing), "--", "true", "{}"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and "path separator" in done.stderr and "Traceback" not in done.stderr


def test_the_pilot_switches_it_on_and_hands_over_the_list(xrootd_server, tmp_path):
    """A queue with `filestager`: stage-in copies nothing and writes the list (TURLs and its mover)."""
    area, files, sums = upload(xrootd_server, 1)
    (area / "tests").mkdir(exist_ok=True)
    os.replace(area / "in0.root", area / "tests" / "in0.root")
    job = one_file_job("in0.root", b"", PandaID="91", fsize=str(files[0].fsize), checksum=f"ad:{sums['in0.root']}")
    queue = QueueConfig(name="Q", se=xrootd_server.root_url(area), copytool="xrootd", filestager=True)
    work = tmp_path / "job"
    work.mkdir()
    Stager(queue, Registry(), threading.Event()).stage_in(job, work, Journal.create(work, 91, 1, "Q", "n", {}))
    assert not (work / "in0.root").exists()
    listed = read_list(work / FILESTAGER_LIST)
    assert listed.copytool == "xrootd"
    assert [(f.lfn, f.url, f.checksum) for f in listed.files] == [
        ("in0.root", xrootd_server.root_url(area / "tests" / "in0.root"), f"ad:{sums['in0.root']}")]
    result = run_stager(tmp_path, listed, ["in0.root"])
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "record.jsonl").read_text())["adler32"] == sums["in0.root"]


def test_no_list_without_the_switch(xrootd_server, tmp_path):
    area, files, sums = upload(xrootd_server, 1)
    (area / "tests").mkdir(exist_ok=True)
    os.replace(area / "in0.root", area / "tests" / "in0.root")
    job = one_file_job("in0.root", b"", PandaID="92", fsize=str(files[0].fsize), checksum=f"ad:{sums['in0.root']}")
    queue = QueueConfig(name="Q", se=xrootd_server.root_url(area), copytool="xrootd")
    Stager(queue, Registry(), threading.Event()).stage_in(job, tmp_path, Journal.create(tmp_path, 92, 1, "Q", "n", {}))
    assert (tmp_path / "in0.root").exists() and not (tmp_path / FILESTAGER_LIST).exists()
