"""The payload's process tree: which processes are the payload's, how much memory they use, how to end
them all, and nothing else on the node.

Two ways, chosen per job by `new_tracker`, which logs the one it takes:
- `CgroupTracker` (pilot.cgroups): where cgroup v2 is writable by the pilot (as root, or in a delegated
  subtree), the payload runs in a cgroup of its own, which no fork can leave, ended with `cgroup.kill`.
- `SubreaperTracker` (pilot.subreaper): the fallback. The pilot is a child subreaper and finds the
  payload's processes by walking the process table; it stops the whole tree before it kills it.
Both offer the interface of pilot.tracker.Tracker.
"""

from __future__ import annotations

import itertools
import logging
import os

from pilot.cgroups import (
    CGROUP_PREFIX,
    CgroupTracker,
    cgroup2_mount,
    cgroup_parent,
    end_cgroup,
    own_cgroup,
    remove_empty_leftovers,
)
from pilot.subreaper import PR_SET_CHILD_SUBREAPER, SubreaperTracker, become_subreaper
from pilot.tracker import Tracker

log = logging.getLogger(__name__)

__all__ = ["CGROUP_PREFIX", "PR_SET_CHILD_SUBREAPER", "CgroupTracker", "SubreaperTracker", "Tracker",
           "become_subreaper", "cgroup2_mount", "cgroup_parent", "end_cgroup", "new_tracker", "own_cgroup"]

_serial = itertools.count(1)


def new_tracker(label: str, use_cgroup: bool = True) -> Tracker:
    """A cgroup for the payload where the node allows one, else the subreaper tracking; says which."""
    if use_cgroup:
        parent = cgroup_parent()
        if parent is not None:
            remove_empty_leftovers(parent)
            name = f"{CGROUP_PREFIX}{os.getpid()}-{next(_serial)}-{label}"
            try:
                tracker = CgroupTracker.create(parent, name)
                log.info("payload processes tracked in cgroup %s", tracker.path)
                return tracker
            except OSError as exc:
                log.info("no cgroup for the payload under %s (%s): child-subreaper tracking", parent,
                         exc.strerror or exc)
        else:
            log.info("no writable cgroup v2 hierarchy: child-subreaper tracking")
    return SubreaperTracker()
