"""The site's input-size policy, checked before any transfer.

The queue's `maxinputsize` (MB, 0: no limit) caps the total size of a job's inputs, as the job's `fsize`
values give it. Overrides let chosen work bring more: each entry of `maxinputsize_overrides` names a
`taskID`, a `processingType` and/or a `dataset` pattern (shell-style, matched against the input
datasets); a job matching every key an entry gives gets that entry's `maxinputsize` (0 or absent: no
limit). The first matching entry wins. Independently, the work dir's file system must have room for
the inputs still to come plus the job's `maxDiskCount`.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pilot.config import QueueConfig
from pilot.errors import ErrorCode, PilotError
from pilot.job import FileSpec, Job
from pilot.node import free_mb

log = logging.getLogger(__name__)
MB = 2**20
OVERRIDE_KEYS = frozenset({"taskID", "processingType", "dataset", "maxinputsize"})


@dataclass(frozen=True)
class Override:
    task_id: Optional[int] = None
    processing_type: Optional[str] = None
    dataset: Optional[str] = None  # a shell-style pattern
    maxinputsize: int = 0  # MB; 0: no limit

    @classmethod
    def parse(cls, entry: Any) -> Override:
        if not isinstance(entry, dict) or not entry:
            raise ValueError(f"maxinputsize override {entry!r} is not a mapping")
        unknown = set(entry) - OVERRIDE_KEYS
        if unknown:
            raise ValueError(f"maxinputsize override has unknown keys: {', '.join(sorted(map(str, unknown)))}")
        if not set(entry) & {"taskID", "processingType", "dataset"}:
            raise ValueError(f"maxinputsize override {entry!r} names no taskID, processingType or dataset")
        try:
            task = int(entry["taskID"]) if "taskID" in entry else None
            limit = int(entry.get("maxinputsize") or 0)
        except (TypeError, ValueError):
            raise ValueError(f"maxinputsize override {entry!r}: taskID and maxinputsize are integers") from None
        if limit < 0:
            raise ValueError(f"maxinputsize override {entry!r}: maxinputsize is negative")
        return cls(task, _text(entry.get("processingType")), _text(entry.get("dataset")), limit)

    def matches(self, job: Job) -> bool:
        if self.task_id is not None and job.task_id != self.task_id:
            return False
        if self.processing_type is not None and job.processing_type != self.processing_type:
            return False
        if self.dataset is not None:
            datasets = {spec.dataset for spec in job.inputs if spec.dataset}
            if not any(fnmatch.fnmatchcase(name, self.dataset) for name in datasets):
                return False
        return True

    def describe(self) -> str:
        parts = [f"taskID={self.task_id}" if self.task_id is not None else "",
                 f"processingType={self.processing_type}" if self.processing_type is not None else "",
                 f"dataset={self.dataset}" if self.dataset is not None else ""]
        return " ".join(p for p in parts if p)


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def overrides(queue: QueueConfig) -> list[Override]:
    return [Override.parse(entry) for entry in queue.maxinputsize_overrides]


def input_limit(job: Job, queue: QueueConfig) -> tuple[int, str]:
    """The job's cap in MB (0: none) and where it comes from."""
    for override in overrides(queue):
        if override.matches(job):
            return override.maxinputsize, f"override for {override.describe()}"
    return queue.maxinputsize, "the queue's maxinputsize"


def input_bytes(files: list[FileSpec]) -> int:
    return sum(spec.fsize or 0 for spec in files)


def check_input_size(job: Job, queue: QueueConfig) -> None:
    """SIZE_TOO_LARGE (1168) when the job's inputs exceed its cap, saying by how much."""
    try:
        limit, source = input_limit(job, queue)
    except ValueError as exc:
        raise PilotError(ErrorCode.GENERAL, f"queue {queue.name}: {exc}") from None
    total = input_bytes(job.inputs)
    if limit and total > limit * MB:
        over = total - limit * MB
        raise PilotError(ErrorCode.SIZE_TOO_LARGE,
                         f"inputs total {total / MB:.1f} MB, over {source} of {limit} MB by {over / MB:.1f} MB")
    if limit != queue.maxinputsize:
        log.info("input size %.1f MB allowed by %s (%s MB)", total / MB, source, limit or "no limit")


def check_free_space(job: Job, workdir: Path, todo: list[FileSpec],
                     free: Callable[[Path], int] = free_mb) -> None:
    """NO_LOCAL_SPACE (1098) when the work dir cannot hold the inputs still to come plus maxDiskCount."""
    needed_mb = input_bytes(todo) / MB + job.max_disk_count
    available = free(workdir)
    if needed_mb and needed_mb > available:
        raise PilotError(ErrorCode.NO_LOCAL_SPACE,
                         f"the work dir needs {needed_mb:.0f} MB (inputs {input_bytes(todo) / MB:.0f} MB + "
                         f"maxDiskCount {job.max_disk_count} MB), {available} MB free")


def check_inputs(job: Job, queue: QueueConfig, workdir: Path, staged: Callable[[str], bool]) -> None:
    """Both checks, before stage-in; `staged(lfn)` says which inputs are already in the work dir."""
    check_input_size(job, queue)
    check_free_space(job, workdir, [spec for spec in job.inputs if not staged(spec.lfn)])
