"""The file stager: the payload stages its inputs one at a time, the next while it works on the current.

The pilot switches it on and hands over a list (`write_list`: the inputs' storage URLs, sizes and
checksums, and the copy method, a site mover name with its setup script). The payload side is either
the module API

    for path in FileStager.from_list("filestager.json"):
        process(path)            # the next file is being fetched meanwhile; this one is removed after

or the command, which runs a program once per file with `{}` replaced by the file's local path:

    python -m pilot.filestager --list filestager.json [--dir DIR] -- program --input {}

Each file is fetched by the named mover (verified size and checksum, temporary name until verified)
into DIR (default: the current directory), at most two files on disk at any time, and each is removed
as soon as its turn is over. Exit codes of the command: 0 all files done, 1 a file could not be fetched
(one line on stderr), 2 bad usage or list, else the first non-zero exit code of the program.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from pilot.fsutil import atomic_write, read_capped
from pilot.job import check_name
from sitemovers.base import Expected, MoverSettings, Outcome, SiteMover, TransferError
from sitemovers.checksum import Checksum
from sitemovers.registry import Registry

log = logging.getLogger(__name__)

LIST_NAME = "filestager.json"
MAX_LIST = 64 << 20  # bytes of a list the stager reads


@dataclass
class StagedFile:
    lfn: str
    url: str
    fsize: Optional[int] = None
    checksum: str = ""


@dataclass
class StagerList:
    copytool: str
    files: list[StagedFile]
    setup: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def write_list(path: Path, stager_list: StagerList) -> None:
    """The pilot's side: the list, written atomically."""
    atomic_write(path, (json.dumps(asdict(stager_list), indent=1, default=str) + "\n").encode())


def hand_over(path: Path, done: list[Any], movers: list[SiteMover]) -> Optional[StagerList]:
    """The pilot's switch: the inputs staging left for remote reading (outcome `direct`, their TURLs) go to
    the file stager's list, with the first mover that reads remotely as the copy method. None (and no
    list) when there is nothing to hand over."""
    remote = [item for item in done if getattr(item, "outcome", None) is Outcome.DIRECT]
    mover = next((m for m in movers if m.direct_read), None)
    if not remote or mover is None:
        return None
    files = [StagedFile(item.lfn, item.location, item.fsize or None, str(item.checksum or "")) for item in remote]
    stager_list = StagerList(mover.name, files, mover.settings.setup, dict(mover.settings.options))
    write_list(path, stager_list)
    return stager_list


def read_list(path: Path) -> StagerList:
    """Raises ValueError with a one-line reason for a list that is not one."""
    try:
        raw = json.loads(read_capped(path, MAX_LIST))
        files = [StagedFile(check_name(str(f["lfn"]), "input name"), str(f["url"]),
                            None if f.get("fsize") is None else int(f["fsize"]), str(f.get("checksum") or ""))
                 for f in raw["files"]]
        return StagerList(str(raw["copytool"]), files, str(raw.get("setup") or ""), dict(raw.get("options") or {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"file stager list {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except Exception as exc:  # PilotError from check_name
        raise ValueError(f"file stager list {path}: {getattr(exc, 'diag', exc)}") from None


class FileStager:
    """Iterate over local paths, each fetched before its turn, the next fetched during it."""

    def __init__(self, mover: SiteMover, files: list[StagedFile], directory: Path,
                 cancel: Optional[threading.Event] = None) -> None:
        self.mover = mover
        self.files = files
        self.directory = Path(directory)
        self.cancel = cancel or threading.Event()

    @classmethod
    def from_list(cls, path: Path | str, directory: Path | str = ".") -> FileStager:
        stager_list = read_list(Path(path))
        mover = Registry().create(stager_list.copytool, MoverSettings(setup=stager_list.setup,
                                                                      options=stager_list.options))
        return cls(mover, stager_list.files, Path(directory))

    def _fetch(self, item: StagedFile) -> Path:
        dest = self.directory / item.lfn
        checksum = Checksum.parse(item.checksum) if item.checksum else None
        self.mover.get(item.url, dest, Expected(item.fsize, checksum, "", item.lfn), self.cancel)
        return dest

    def __iter__(self) -> Iterator[Path]:
        if not self.files:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="filestager") as pool:
            upcoming: Future = pool.submit(self._fetch, self.files[0])
            try:
                for index in range(len(self.files)):
                    current = upcoming.result()
                    if index + 1 < len(self.files):
                        upcoming = pool.submit(self._fetch, self.files[index + 1])
                    try:
                        yield current
                    finally:
                        current.unlink(missing_ok=True)
            finally:
                self.cancel.set()  # an early stop: the fetch under way is cancelled, its partial removed
                try:
                    extra = upcoming.result()
                    extra.unlink(missing_ok=True)
                except (TransferError, OSError):
                    pass


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilot.filestager",
                                     description="Fetch inputs one ahead of a program run once per file.")
    parser.add_argument("--list", required=True, type=Path, help=f"the pilot's list ({LIST_NAME})")
    parser.add_argument("--dir", type=Path, default=Path("."), help="where files are fetched (default: .)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- program args ({} is the file's path)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.print_usage(sys.stderr)
        return 2
    try:
        stager = FileStager.from_list(args.list, args.dir)
    except (ValueError, LookupError) as exc:
        print(f"filestager: {exc}", file=sys.stderr)
        return 2
    try:
        for path in stager:
            argv_now = [str(path) if word == "{}" else word for word in command]
            code = subprocess.run(argv_now, check=False).returncode
            if code != 0:
                print(f"filestager: {argv_now[0]} exited with {code} on {path.name}", file=sys.stderr)
                return code
    except TransferError as exc:
        print(f"filestager: {exc.diag}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
