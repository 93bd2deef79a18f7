"""Hostile and malformed job definitions for the embedded dispatcher, reproducible from a seed.

Each definition starts from a valid job (one input, one output, the log) and gets one mutation: a
field removed or given a hostile name, a path, a bad number, a NUL or a lone surrogate, JSON nested
100,000 deep, a value of the wrong type, or no JSON at all, or no regular file at all (a FIFO, a link to
/dev/zero, a directory). Used by tests/fuzz/test_fuzz.py (the proof) and bench/fuzz.py (the table).
"""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

INPUT = b"input data\n"
DEEP = 100_000

Content = Union[dict[str, Any], bytes, str]  # a definition, raw bytes, or "fifo" / "zero-link" / "directory"


@dataclass
class Fuzzed:
    panda_id: int  # the number of its file name (the definition's own PandaID may be mutated away)
    mutation: str
    content: Content


def base(panda_id: int) -> dict[str, Any]:
    return {
        "PandaID": str(panda_id), "attemptNr": "1", "transformation": "/bin/sh",
        "jobPars": "-c 'cat in.dat > out.dat'", "prodSourceLabel": "managed",
        "inFiles": "in.dat", "fsize": str(len(INPUT)), "checksum": f"ad:{zlib.adler32(INPUT):08x}",
        "scopeIn": "scope", "GUID": f"g-{panda_id}",
        "outFiles": f"out.dat,{panda_id}.log.tgz", "scopeOut": "scope,scope",
        "logFile": f"{panda_id}.log.tgz", "logGUID": f"log-{panda_id}",
    }


def _set(key: str, value: Any) -> Callable[[dict[str, Any], random.Random], Content]:
    def mutate(job: dict[str, Any], rng: random.Random) -> Content:
        job[key] = value
        return job
    return mutate


def _drop(key: str) -> Callable[[dict[str, Any], random.Random], Content]:
    def mutate(job: dict[str, Any], rng: random.Random) -> Content:
        job.pop(key, None)
        return job
    return mutate


def _raw(data: bytes) -> Callable[[dict[str, Any], random.Random], Content]:
    return lambda job, rng: data


def _special(kind: str) -> Callable[[dict[str, Any], random.Random], Content]:
    return lambda job, rng: kind


def _deep_field(job: dict[str, Any], rng: random.Random) -> Content:
    return json.dumps(job)[:-1] + ', "nested": ' + "[" * DEEP + "]" * DEEP + "}"


def _output_name(job: dict[str, Any], rng: random.Random, name: str) -> Content:
    job["outFiles"] = f"{name},{job['logFile']}"
    return job


def _random_bytes(job: dict[str, Any], rng: random.Random) -> Content:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))


def _truncated(job: dict[str, Any], rng: random.Random) -> Content:
    text = json.dumps(job).encode()
    return text[: rng.randrange(1, len(text) - 1)]


def _random_field(job: dict[str, Any], rng: random.Random) -> Content:
    key = rng.choice(sorted(job))
    job[key] = rng.choice(["", "NULL", "\x00", "\ud800", "../" * 5, "-" * 3, "9" * 30, "\u0663", " ", ",,,", "*"])
    return job


HOSTILE_NAMES = ["../../escaped.dat", "/etc/passwd", "a/b.dat", "..", ".", "bad\x00name", "tab\tname",
                 "new\nline", "-rf", "journal.json", "jobdef.json", "pilot.log", "x" * 300, "\u202eevil"]

MUTATIONS: dict[str, Callable[[dict[str, Any], random.Random], Content]] = {
    "valid": lambda job, rng: job,
    "valid unicode name": lambda job, rng: {**_output_name(job, rng, "ünïcode ø.dat"),  # type: ignore[dict-item]
                                            "jobPars": "-c 'cat in.dat > \"ünïcode ø.dat\"'"},
    "no transformation": _drop("transformation"),
    "no PandaID": _drop("PandaID"),
    "PandaID not a number": _set("PandaID", "12ab"),
    "PandaID in other digits": _set("PandaID", "\u0661\u0662"),
    "PandaID negative": _set("PandaID", "-5"),
    "PandaID too large": _set("PandaID", "9" * 40),
    "hostile output name": lambda job, rng: _output_name(job, rng, rng.choice(HOSTILE_NAMES)),
    "hostile input name": _set("inFiles", "../../../etc/shadow"),
    "hostile log name": _set("logFile", "../up.tgz"),
    "scope *": _set("scopeIn", "*"),
    "scope True": _set("scopeOut", "True,scope"),
    "scope journal.json": _set("scopeOut", "journal.json,scope"),
    "scope path": _set("scopeIn", "../../etc"),
    "scope too long": _set("scopeIn", "s" * 40),
    "fsize other digits": _set("fsize", "\u0661\u0661"),
    "fsize negative": _set("fsize", "-11"),
    "fsize absurd": _set("fsize", str(10**30)),
    "fsize fraction": _set("fsize", "11.5"),
    "coreCount garbage": _set("coreCount", "lots"),
    "maxDiskCount huge": _set("maxDiskCount", "9" * 25),
    "lists of other lengths": _set("GUID", "g1,g2,g3"),
    "checksum unknown": _set("checksum", "sha1:abc"),
    "NUL in jobPars": _set("jobPars", "-c 'echo a\x00b'"),
    "lone surrogate": _set("prodUserID", "\udc80user"),
    "NUL in a key": _set("odd\x00key", "x"),
    "value a list": _set("jobPars", ["-c", "true"]),
    "value an object": _set("homepackage", {"a": {"b": [1, 2]}}),
    "value true": _set("scopeLog", True),
    "value null": _set("transformation", None),
    "huge jobPars": _set("jobPars", "-c 'true' " + "x" * 1_000_000),
    "transformation missing": _set("transformation", "/no/such/program"),
    "transformation option": _set("transformation", "-rf"),
    "random field": _random_field,
    "deep JSON in a field": _deep_field,
    "deep JSON array": _raw(b"[" * DEEP + b"]" * DEEP),
    "JSON not an object": _raw(b"[1, 2, 3]"),
    "truncated JSON": _truncated,
    "random bytes": _random_bytes,
    "empty file": _raw(b""),
    "FIFO": _special("fifo"),
    "link to /dev/zero": _special("zero-link"),
    "directory": _special("directory"),
}


def definitions(seed: int, count: int, first_id: int = 10_000) -> list[Fuzzed]:
    """`count` definitions: every mutation at least once (when count allows), the rest drawn at random."""
    rng = random.Random(seed)
    names = sorted(MUTATIONS)
    chosen = (names * (count // len(names) + 1))[: min(count, len(names))]
    chosen += [rng.choice(names) for _ in range(count - len(chosen))]
    rng.shuffle(chosen)
    return [Fuzzed(first_id + 2 * i, name, MUTATIONS[name](base(first_id + 2 * i), rng))
            for i, name in enumerate(chosen)]


def write(jobdir: Path, fuzzed: Fuzzed) -> Path:
    """The definition as a job file, made to look complete (last written a minute ago)."""
    path = jobdir / f"{fuzzed.panda_id}.json"
    content = fuzzed.content
    if content == "fifo":
        os.mkfifo(path)
    elif content == "zero-link":
        os.symlink("/dev/zero", path)
    elif content == "directory":
        path.mkdir()
    else:
        if isinstance(content, dict):
            content = json.dumps(content)
        path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    old = time.time() - 60
    os.utime(path, (old, old), follow_symlinks=False)
    return path


@dataclass
class Outcome:
    kind: str  # "finished", "failed", "rejected", "rejected (no PandaID)", or "lost" (a pilot failure)
    code: int = 0  # the job's error code, when reported failed
    diag: str = ""  # its diagnostic, or the rejection's reason

    @property
    def label(self) -> str:
        return f"{self.kind} {self.code}" if self.code else self.kind


def outcome(jobdir: Path, panda_id: int, history: list[dict[str, Any]]) -> Outcome:
    """What the embedded dispatcher's directory says became of job file `panda_id`."""
    if history:
        last = history[-1]
        if last.get("job_status") == "failed":
            return Outcome("failed", int(last.get("pilot_error_code", 0)), str(last.get("pilot_error_diag", "")))
        return Outcome(str(last.get("job_status")))
    reason = jobdir / "rejected" / f"{panda_id}.json.reason"
    if reason.exists():
        return Outcome("rejected", 0, reason.read_text().strip())
    if os.path.lexists(jobdir / "claimed" / f"{panda_id}.json"):
        return Outcome("rejected (no PandaID)")  # claimed, then kept in rejected/unidentified-*
    return Outcome("lost")
