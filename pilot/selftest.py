"""`pandapilot selftest`: the release tester's battery of test jobs, run on this node with a candidate pilot.

Each test builds a throw-away site (pilot/sitebuilder.py) with the queue configuration under test, its
storage settings pointed at the site's own directory and the local mover, runs the pilot under test as a
separate process (a bundle with the node's python3, or the installed package) over one or a few jobs, and
judges what the embedded dispatcher received and what landed in storage. The site movers are tested one
family at a time, each in both directions: a family that works on plain paths or file:// on the site's
own directory, a family the queue's storage endpoint (`se`) speaks against that storage (under a scope
of its own, removed afterwards): pilot/selftest_storage.py. `--compare BUNDLE` runs the same battery
with a second pilot (e.g. production) and prints both side by side with timings. A test whose feature
this pilot does not have, or that the queue does not use or configure, is reported as not available with
the reason, never passed.
Exit code: 0 when no test failed, 1 otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from pilot.errors import ErrorCode
from pilot.selftest_storage import (
    MOVER_KEYS,
    STORAGE_KEYS,
    StorageFailed,
    configured_movers,
    mover_class,
    storage_for,
    storage_unavailable,
    stored_at,
)
from pilot.sitebuilder import Site, adler32
from sitemovers.registry import Registry

PASS, FAIL, NOT_AVAILABLE = "pass", "FAIL", "n/a"


class CheckFailed(Exception):
    pass


@dataclass
class Pilot:
    """How to start the pilot under test: `python3 BUNDLE` or this interpreter's `-m pilot`."""

    label: str
    argv: list[str]
    bundle: Optional[Path] = None

    @classmethod
    def of(cls, bundle: Optional[Path], python: str, label: str) -> Pilot:
        if bundle is None:
            return cls(label, [sys.executable, "-m", "pilot"])
        return cls(label, [python, str(Path(bundle).absolute())], Path(bundle).absolute())

    def version(self) -> str:
        """What the pilot says it is (`--version`)."""
        try:
            done = subprocess.run([*self.argv, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"version unknown ({exc})"
        lines = (done.stdout or done.stderr).strip().splitlines()
        return lines[0] if done.returncode == 0 and lines else f"version unknown (exit code {done.returncode})"

    def has_module(self, name: str) -> bool:
        path = name.replace(".", "/") + ".py"
        if self.bundle is not None:
            try:
                with zipfile.ZipFile(self.bundle) as zf:
                    return path in zf.namelist()
            except (OSError, zipfile.BadZipFile):
                return False
        return importlib.util.find_spec(name) is not None


@dataclass
class Run:
    """One test's site and the pilot under test."""

    site: Site
    pilot: Pilot
    timeout: float
    queue: dict[str, Any] = field(default_factory=dict)  # the queue's own settings, storage included

    def pilot_run(self, *extra: str) -> subprocess.CompletedProcess:
        argv = [*self.pilot.argv, "run", *self.site.run_options(*extra)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, cwd=self.site.root)

    def start(self, *extra: str) -> subprocess.Popen:
        argv = [*self.pilot.argv, "run", *self.site.run_options(*extra)]
        log = open(self.site.root / "pilot.out", "w")  # noqa: SIM115 - handed to the child, closed below
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.site.root)
        finally:
            log.close()

    def final(self, panda_id: int, state: str, code: int = 0) -> dict[str, Any]:
        final = self.site.final_or_none(panda_id)
        if not final:
            raise CheckFailed(f"job {panda_id} got no final report")
        if (final["job_status"], final.get("pilot_error_code", 0)) != (state, code):
            raise CheckFailed(f"job {panda_id} {final['job_status']} {final.get('pilot_error_code')}: "
                              f"{final.get('pilot_error_diag', '')} (expected {state} {code})")
        return final

    def stored(self, name: str) -> bytes:
        return stored_at(self.site.outputs / name)


@dataclass(frozen=True)
class Check:
    name: str
    action: Callable[[Run], str]
    settings: dict[str, Any] = field(default_factory=dict)
    unavailable: Callable[[Pilot, dict[str, Any]], Optional[str]] = lambda pilot, queue: None


def _success(run: Run) -> str:
    data = os.urandom(200_000)
    run.site.add_job(1, "cp input.dat output.dat", (run.site.put_input("input.dat", data),), ("output.dat",))
    run.pilot_run()
    run.final(1, "finished")
    if run.stored("output.dat") != data:
        raise CheckFailed("the output in storage differs from what the payload wrote")
    return "input in, output out, verified"


def _payload_failure(run: Run) -> str:
    run.site.add_job(2, "echo broken >&2; exit 3", outputs=("never.dat",))
    run.pilot_run()
    final = run.final(2, "failed", ErrorCode.PAYLOAD_FAILED)
    if final.get("trans_exit_code") != 3:
        raise CheckFailed(f"transExitCode {final.get('trans_exit_code')}, expected 3")
    return "failed 1305, exit code 3"


def _looping(run: Run) -> str:
    run.site.add_job(3, "sleep 600", maxCpuCount="2")
    run.pilot_run()
    run.final(3, "failed", ErrorCode.LOOPING)
    return "killed as looping (1150)"


def _mover_unavailable(family: str, pilot: Pilot, queue: dict[str, Any]) -> Optional[str]:
    """Why the family cannot be tried here: this pilot lacks it, or its storage is not configured."""
    mover = mover_class(family)
    if mover is not None and not pilot.has_module(mover.__module__):
        return f"this pilot has no {mover.__module__}"
    return storage_unavailable(family, queue)


def _movers(family: str, run: Run) -> str:
    if mover_class(family) is None:
        raise CheckFailed(f"no site mover named {family!r} (known: {', '.join(Registry().names())})")
    storage = storage_for(run.site, family, run.queue)
    data = os.urandom(100_000)
    try:
        run.site.add_job(4, "cp moved.dat back.dat", (storage.put_input("moved.dat", data),), ("back.dat",),
                         scope=storage.scope)
        run.pilot_run()
        run.final(4, "finished")
        if storage.output("back.dat") != data:
            raise CheckFailed("the staged-out file differs from the staged-in one")
    finally:
        storage.clean(["moved.dat", "back.dat", "4.log.tgz"])
    return f"stage-in and stage-out through {family}, {storage.where}"


def _large_file(run: Run) -> str:
    size = 100 << 20
    run.site.add_job(5, f"head -c {size} /dev/urandom > large.dat", outputs=("large.dat",))
    run.pilot_run()
    final = run.final(5, "finished")
    entry = (final.get("job_output_report") or {}).get("large.dat", {})
    stored = run.stored("large.dat")
    if len(stored) != size or entry.get("adler32") != adler32(stored):
        raise CheckFailed("size or checksum of the large output is wrong")
    return f"{size >> 20} MB out, checksum verified"


def _many_small_files(run: Run) -> str:
    count = 200
    inputs = tuple(run.site.put_input(f"small-{i:03d}.dat", os.urandom(2048)) for i in range(count))
    run.site.add_job(6, "cat small-*.dat > joined.dat", inputs, ("joined.dat",))
    run.pilot_run()
    run.final(6, "finished")
    if len(run.stored("joined.dat")) != count * 2048:
        raise CheckFailed("the joined output has the wrong size")
    return f"{count} inputs in, joined output out"


def _first_mapping(mapfile: str) -> tuple[str, str]:
    """The first `"DN" account` line of a grid-mapfile."""
    try:
        lines = Path(mapfile).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckFailed(f"the queue's grid_mapfile {mapfile} cannot be read: {exc}") from None
    for line in lines:
        if line.startswith('"') and '"' in line[1:]:
            dn, _, account = line[1:].partition('"')
            return dn, account.strip()
    raise CheckFailed(f"no DN in the queue's grid_mapfile {mapfile}")


def _closed_to_others(path: Path) -> Optional[Path]:
    """The first directory on the way to `path` that another account cannot pass through."""
    for directory in [*reversed(path.parents), path]:
        try:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return directory
        except OSError:
            return directory
    return None


def _identity(run: Run) -> str:
    queue = run.site.queue_settings
    closed = _closed_to_others(run.site.root)
    if closed is not None:
        raise CheckFailed(f"the payload's account cannot reach the test site: {closed} is closed to other "
                          "accounts (give --dir a directory they can pass through)")
    queue["sepath"] = queue["seprodpath"]  # a user job's outputs land where the others' do
    extra = {"prodSourceLabel": "user"}
    expected = None
    if queue.get("grid_mapfile"):
        extra["prodUserID"], account = _first_mapping(str(queue["grid_mapfile"]))
        expected = None if account.startswith(".") else account  # a pool: any of its accounts
    run.site.add_job(7, "id -u > uid.txt", outputs=("uid.txt",), **extra)
    run.pilot_run()
    run.final(7, "finished")
    uid = run.stored("uid.txt").decode().strip()
    if uid == str(os.getuid()):
        raise CheckFailed(f"the payload ran as the pilot's own uid {uid}")
    if expected is not None:
        try:
            mapped = pwd.getpwnam(expected).pw_uid
        except KeyError:
            raise CheckFailed(f"the DN maps to {expected}, which does not exist here") from None
        if uid != str(mapped):
            raise CheckFailed(f"the payload ran as uid {uid}, not as {expected} (uid {mapped})")
        return f"payload ran as {expected} (uid {uid}), the account {extra['prodUserID']} maps to"
    return f"payload ran as uid {uid} ({queue['identity']})"


def _recovery(run: Run) -> str:
    flag = run.site.root / "never"
    run.site.add_job(8, f"while [ ! -e {flag} ]; do sleep 0.1; done", outputs=("late.dat",))
    first = run.start("--heartbeat", "1")
    deadline = time.monotonic() + run.timeout
    while "running" not in run.site.states(8):
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            raise CheckFailed("the job never started running")
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    if run.site.final_or_none(8):
        raise CheckFailed("a final report was sent although the pilot was killed")
    run.pilot_run()  # the next pilot on the node, same work dir
    final = run.final(8, "failed", ErrorCode.LOST_JOB_NOT_FINISHED)
    finals = [h for h in run.site.history(8) if h["job_status"] in ("finished", "failed")]
    if len(finals) != 1:
        raise CheckFailed(f"{len(finals)} final reports")
    return f"recovered by the next pilot: {final['job_status']} {final.get('pilot_error_code')}"


def _needs(module: str) -> Callable[[Pilot, dict[str, Any]], Optional[str]]:
    def unavailable(pilot: Pilot, queue: dict[str, Any]) -> Optional[str]:
        return None if pilot.has_module(module) else f"this pilot has no {module}"

    return unavailable


def _identity_unavailable(pilot: Pilot, queue: dict[str, Any]) -> Optional[str]:
    identity = str(queue.get("identity", "none"))
    if identity == "none":
        return "the queue does not switch identity (identity: none)"
    if identity == "glexec" and not queue.get("user_proxy_command"):
        return "glexec maps a user's proxy: the queue has no user_proxy_command to get one for a test job"
    return _needs("pilot.identity")(pilot, queue)


MOVERS = "site movers"  # one check per mover family the queue configures: "site movers (xrootd)"
LOOPING = {"looping_limit_min": 2, "looping_check_interval": 0.5, "kill_grace": 2}
CHECKS: tuple[Check, ...] = (
    Check("success", _success),
    Check("payload failure", _payload_failure),
    Check("looping kill", _looping, LOOPING),
    Check(MOVERS, _movers),
    Check("large file", _large_file),
    Check("many small files", _many_small_files),
    Check("other identity", _identity, unavailable=_identity_unavailable),
    Check("recovery after SIGKILL", _recovery, unavailable=_needs("recovery.jobrecovery")),
)


@dataclass
class Outcome:
    status: str
    seconds: float
    detail: str


def battery(queue: dict[str, Any], only: Optional[set[str]] = None) -> list[Check]:
    """The checks to run, the site movers one expanded into one check per family the queue configures;
    `only` names checks (`site movers` all the families, `site movers (xrootd)` one)."""
    checks: list[Check] = []
    for check in CHECKS:
        if check.name != MOVERS:
            checks.append(check)
            continue
        for family in configured_movers(queue):
            checks.append(Check(f"{MOVERS} ({family})", functools.partial(check.action, family),
                                {"copytool": family}, functools.partial(_mover_unavailable, family)))
    return [c for c in checks if not only or c.name in only or c.name.split(" (")[0] in only]


def run_check(check: Check, pilot: Pilot, queue: dict[str, Any], root: Path, timeout: float) -> Outcome:
    reason = check.unavailable(pilot, queue)
    if reason:
        return Outcome(NOT_AVAILABLE, 0.0, reason)
    settings = {k: v for k, v in queue.items() if k not in (*STORAGE_KEYS, *MOVER_KEYS)}
    name = check.name.replace(" ", "-").replace("(", "").replace(")", "")
    site = Site(root / name, {**settings, **check.settings}, queue="SELFTEST")
    begin = time.monotonic()
    try:
        detail, status = check.action(Run(site, pilot, timeout, queue)), PASS
    except (CheckFailed, StorageFailed) as exc:
        detail, status = str(exc), FAIL
    except subprocess.TimeoutExpired:
        detail, status = f"the pilot did not end within {timeout:.0f} s", FAIL
    except Exception as exc:  # the battery goes on: the row says what broke
        detail, status = f"the test itself broke: {type(exc).__name__}: {exc}", FAIL
    return Outcome(status, time.monotonic() - begin, detail)


def run_battery(pilots: list[Pilot], queue: dict[str, Any], root: Path, only: Optional[set[str]] = None,
                timeout: float = 300, out: Any = sys.stdout) -> int:
    results: dict[str, list[Outcome]] = {}
    for check in battery(queue, only):
        results[check.name] = [run_check(check, p, queue, root / f"p{i}", timeout) for i, p in enumerate(pilots)]
    print_table(pilots, results, out)
    failed = any(o.status == FAIL for row in results.values() for o in row)
    return 1 if failed else 0


def print_table(pilots: list[Pilot], results: dict[str, list[Outcome]], out: Any) -> None:
    for pilot in pilots:
        print(f"{pilot.label}: {pilot.version()}", file=out)
    print(file=out)
    width = max([len(n) for n in results] + [4])
    head = f"{'test':{width}}" + "".join(f"  {p.label[:22]:22} {'time':>7}" for p in pilots)
    print(head, file=out)
    print("-" * len(head), file=out)
    for name, row in results.items():
        cells = "".join(f"  {o.status:22} {o.seconds:6.1f}s" for o in row)
        print(f"{name:{width}}{cells}", file=out)
    print(file=out)
    for name, row in results.items():
        for pilot, outcome in zip(pilots, row):
            print(f"{name} [{pilot.label}]: {outcome.status}: {outcome.detail}", file=out)
    total = [sum(o.seconds for o in col) for col in zip(*results.values())]
    print("battery wall time: " + ", ".join(f"{p.label} {t:.1f} s" for p, t in zip(pilots, total)), file=out)


def load_queue(path: Optional[Path]) -> dict[str, Any]:
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of queue settings")
    queues = data.get("queues")
    if isinstance(queues, dict) and len(queues) == 1:
        return dict(next(iter(queues.values())) or {})
    return data


def main_selftest(bundle: Optional[Path], compare: Optional[Path], queue_file: Optional[Path], python: str,
                  directory: Optional[Path], only: Optional[set[str]], timeout: float) -> int:
    try:
        queue = load_queue(queue_file)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"selftest: cannot read the queue configuration: {exc}", file=sys.stderr)
        return 2
    unknown = {name for name in only or () if name.split(" (")[0] not in {c.name for c in CHECKS}}
    if unknown:
        print(f"selftest: no test named {', '.join(sorted(unknown))} (known: {', '.join(c.name for c in CHECKS)})",
              file=sys.stderr)
        return 2
    pilots = [Pilot.of(bundle, python, bundle.name if bundle else "installed")]
    if compare is not None:
        pilots.append(Pilot.of(compare, python, f"{compare.name} (compare)"))
    for pilot in pilots:
        if pilot.bundle is not None and not pilot.bundle.is_file():
            print(f"selftest: no bundle {pilot.bundle}", file=sys.stderr)
            return 2
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        return run_battery(pilots, queue, directory.absolute(), only, timeout)
    with tempfile.TemporaryDirectory(prefix="pandapilot-selftest-") as tmp:
        os.chmod(tmp, 0o711)  # a payload under another identity passes through to its work dir
        return run_battery(pilots, queue, Path(tmp), only, timeout)
