"""Who the user is on this node: the local account a user's DN maps to, through a grid-mapfile (`uid`
mode; glexec does its own mapping)."""

from __future__ import annotations

import fnmatch
import hashlib
import pwd
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pilot.errors import ErrorCode, PilotError
from pilot.fsutil import read_capped

ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
MAX_MAPFILE = 16 * 2**20


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def named(cls, name: str) -> Account:
        if not ACCOUNT_NAME.match(name):
            raise PilotError(ErrorCode.GLEXEC, f"not an account name: {name!r}")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise PilotError(ErrorCode.GLEXEC, f"account {name} does not exist on this node") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


@dataclass
class GridMap:
    """grid-mapfile lines: `"DN" account`, where DN may hold `*` wildcards and an account `.prefix` is a
    pool (the accounts prefix001, prefix002, ...; a DN always gets the same one of them)."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> GridMap:
        try:
            text = read_capped(path, MAX_MAPFILE).decode("utf-8", "replace")
        except OSError as exc:
            raise PilotError(ErrorCode.GLEXEC, f"grid-mapfile {path} unreadable: {exc.strerror}") from None
        entries = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            if len(words) >= 2:
                entries.append((words[0], words[1].split(",")[0]))
        return cls(entries)

    def account(self, dn: str) -> Account:
        for pattern, target in self.entries:
            if pattern == dn or (("*" in pattern or "?" in pattern) and fnmatch.fnmatchcase(dn, pattern)):
                return pool_member(target[1:], dn) if target.startswith(".") else Account.named(target)
        raise PilotError(ErrorCode.GLEXEC, f"the user's DN is not mapped to a local account: {dn}")


def pool_member(prefix: str, dn: str) -> Account:
    members = sorted(p.pw_name for p in pwd.getpwall()
                     if p.pw_name.startswith(prefix) and p.pw_name[len(prefix):].isdigit())
    if not members:
        raise PilotError(ErrorCode.GLEXEC, f"pool .{prefix} has no accounts on this node")
    pick = int(hashlib.sha256(dn.encode()).hexdigest(), 16) % len(members)
    return Account.named(members[pick])
