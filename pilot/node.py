"""Facts about the worker node, read with psutil."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class NodeInfo:
    host: str
    cores: int
    memory_mb: int
    disk_free_mb: int  # under the pilot's work dir
    cpu_mhz: int
    cpu_model: str = ""  # /proc/cpuinfo's "model name"

    @classmethod
    def probe(cls, workdir: Path) -> NodeInfo:
        try:
            freq = psutil.cpu_freq()
            mhz = int(freq.current) if freq else 0
        except (OSError, NotImplementedError):
            mhz = 0
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = psutil.cpu_count() or 1
        return cls(
            host=socket.gethostname(),
            cores=cores,
            memory_mb=psutil.virtual_memory().total // 2**20,
            disk_free_mb=free_mb(workdir),
            cpu_mhz=mhz,
            cpu_model=cpu_model(),
        )


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name ('' where the kernel does not say)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 16)
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, name = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return " ".join(name.split())
    return ""


def free_mb(path: Path) -> int:
    return shutil.disk_usage(path).free // 2**20
