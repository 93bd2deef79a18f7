"""Command line: `pandapilot run ...` (the pilot) and `pandapilot demo` (a throw-away site)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

from pilot import __version__
from pilot.config import PilotConfig, QueueConfig
from pilot.errors import ExitCode
from pilot.versiontag import job_label, parse_tag, pilot_id_field
from pilot.workarea import WorkArea

if TYPE_CHECKING:
    from pilot.control import Control
    from pilot.jobrun import PilotContext
    from pilot.pcache import Pcache
    from sitemovers.registry import Registry

log = logging.getLogger("pilot")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not greater than 0")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _version_tag(text: str) -> str:
    try:
        return parse_tag(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


BATCH_ID_VARIABLES = ("PANDA_BATCH_ID", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def batch_id_from_env(env: Mapping[str, str]) -> Optional[str]:
    """The batch job's id as the batch system tells its jobs (HTCondor: the submit description sets
    PANDA_BATCH_ID, see launch/pilot.sub)."""
    return next((env[name] for name in BATCH_ID_VARIABLES if env.get(name)), None)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", "-q", required=True, help="the PanDA queue (site) name")
    p.add_argument("--dispatcher", "-d",
                   help="a job directory (embedded dispatcher) or the PanDA server URL (https://host:25443); "
                        "required unless --access-point is given")
    p.add_argument("--access-point", type=Path,
                   help="Harvester push mode: the worker's access point holding the job (pandaJobData.out); "
                        "reports go to --dispatcher's server (truePilot) or, without one, to the factory's files")
    p.add_argument("--worker-heartbeat", type=_not_negative, default=60.0, metavar="S",
                   help="with --access-point: seconds between the worker's heartbeats for the factory "
                        "(worker_heartbeat.json; 0: none)")
    p.add_argument("--dispatcher-api", choices=("v1", "legacy"), default="v1",
                   help="PanDA server dialect: v1 (/api/v1/pilot) or legacy (/server/panda)")
    p.add_argument("--queue-config", type=Path, help="YAML file with the queue's settings (schedconfig)")
    p.add_argument("--workdir", type=Path, help="the pilot's work directory (default: ./pilot-<pid>)")
    p.add_argument("--job-label", default="managed", help="prodSourceLabel to ask for (managed, user, test, ...)")
    p.add_argument("--version-tag", type=_version_tag, default=os.environ.get("PANDA_PILOT_VERSION_TAG", "PR"),
                   help="which code the wrapper chose: PR (production), RC, RCM, ALRB (release candidates: test "
                        "jobs only), PT (development: pilot test jobs)")
    p.add_argument("--batch-id", default=batch_id_from_env(os.environ),
                   help="the batch job's id, sent with every update (default: from SLURM_JOB_ID, ...)")
    p.add_argument("--resource-type", help="SCORE, MCORE, ...")
    p.add_argument("--computing-element", help="the CE / batch queue name")
    p.add_argument("--max-jobs", type=int, default=0, help="stop after N jobs (0: no limit)")
    p.add_argument("--lifetime", type=int, default=0, help="seconds this pilot may live (0: the queue's maxtime)")
    p.add_argument("--max-no-job", type=int, default=3, help="stop after N consecutive 'no job' answers")
    p.add_argument("--no-job-wait", type=float, default=60.0, help="seconds to wait after a 'no job' (doubles)")
    p.add_argument("--max-failures", type=int, default=3, help="stop after K failed jobs in a row")
    p.add_argument("--stop-file", type=Path, help="stop taking jobs once this file exists (default: <workdir>/STOP)")
    p.add_argument("--heartbeat", type=_positive, help="seconds between heartbeats (default: the queue's, 1800)")
    p.add_argument("--keep-workdirs", action="store_true", help="keep each job's work dir after its report")
    p.add_argument("--no-recovery", action="store_true",
                   help="do not recover the jobs dead pilots left in the work area before taking new ones")
    p.add_argument("--lost-heartbeat", type=float, default=0.0,
                   help="embedded dispatcher: seconds without an update after which a claimed job is failed "
                        "(lost heartbeat) and offered again as its next attempt (0: never)")
    p.add_argument("--pilot-id", default="", help="this pilot's identity (e.g. the batch job id)")
    p.add_argument("--scheduler-id", default=os.environ.get("PANDA_SCHEDULER_ID", ""), help="factory identity")
    p.add_argument("--harvester-id", default=os.environ.get("HARVESTER_ID"), help="Harvester instance id")
    p.add_argument("--worker-id", type=int, default=os.environ.get("HARVESTER_WORKER_ID"), help="Harvester worker id")
    tls = p.add_argument_group("PanDA server connection")
    tls.add_argument("--cacert", help="CA bundle to verify the server")
    tls.add_argument("--capath", default=os.environ.get("X509_CERT_DIR"), help="CA directory (X509_CERT_DIR)")
    tls.add_argument("--cert", help="client certificate (PEM)")
    tls.add_argument("--key", help="client key (PEM)")
    tls.add_argument("--proxy", default=os.environ.get("X509_USER_PROXY"), help="X.509 proxy (X509_USER_PROXY)")
    tls.add_argument("--token-file", help="file holding a bearer token")
    tls.add_argument("--origin", help="the VO, sent with a token")
    tls.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")
    tls.add_argument("--retry-budget", type=float, default=600.0,
                     help="seconds to keep retrying a request that fails in transport")
    tls.add_argument("--pcache-report-field", default="", metavar="NAME",
                     help="send the node cache's file list with each job request under this field name "
                          "(off by default: a PanDA server refuses fields it does not know)")


def version_line() -> str:
    """`pandapilot <version>`, and in a bundle where and when it was built."""
    try:
        from _pandapilot_bundle import BUNDLE  # written into the zipapp by launch/build.py
    except ImportError:
        return f"pandapilot {__version__}"
    return f"pandapilot {__version__} (bundle {BUNDLE['name']}, built {BUNDLE['built']} from {BUNDLE['source']})"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pandapilot", description="A pilot agent for PanDA-style workload systems.")
    top.add_argument("--version", action="version", version=version_line())
    top.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = top.add_subparsers(dest="command", required=True)
    _add_run_arguments(sub.add_parser("run", help="run jobs from a dispatcher"))
    _add_run_arguments(sub.add_parser("recover", help="only recover the jobs dead pilots left, then stop"))
    demo = sub.add_parser("demo", help="run a handful of jobs on a throw-away local site")
    demo.add_argument("--dir", type=Path, help="where to build the site (default: a new temporary directory)")
    test = sub.add_parser("selftest", help="the release tester's battery of test jobs on this node")
    test.add_argument("--bundle", type=Path, help="the candidate bundle (default: this installed pilot)")
    test.add_argument("--compare", type=Path, metavar="BUNDLE",
                      help="run the battery with this bundle too (e.g. production) and show both side by side")
    test.add_argument("--queue-config", type=Path, help="the queue's settings (YAML) to test with")
    test.add_argument("--python", default=shutil.which("python3") or sys.executable,
                      help="the python3 that runs the bundles (default: python3 on PATH)")
    test.add_argument("--dir", type=Path, help="where to build the test sites (default: a temporary directory)")
    test.add_argument("--only", help="comma-separated test names (default: all)")
    test.add_argument("--timeout", type=_positive, default=300.0, help="seconds one pilot run may take")
    releases = sub.add_parser("releases", help="list the software releases installed on this node")
    releases.add_argument("--queue", "-q", default="LOCAL", help="the queue whose appdir/envsetup to use")
    releases.add_argument("--queue-config", type=Path, help="YAML file with the queue's settings")
    releases.add_argument("--appdir", help="release roots (comma-separated), instead of the queue's appdir")
    releases.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return top


def list_releases(args: argparse.Namespace) -> int:
    """`pandapilot releases`: the installed releases and platforms, as a table or JSON."""
    import dataclasses
    import json

    from pilot.release import installed

    try:
        queue = QueueConfig.load(args.queue, args.queue_config)
    except ValueError as exc:
        log.error("%s", exc)
        return ExitCode.GENERAL
    if args.appdir:
        queue = dataclasses.replace(queue, appdir=args.appdir)
    if not queue.appdir:
        log.error("queue %s names no release roots (appdir); give --appdir or --queue-config", queue.name)
        return ExitCode.GENERAL
    found = installed(queue)
    if args.json:
        print(json.dumps([r.as_dict() for r in found], indent=1))
        return ExitCode.OK
    rows = [("RELEASE", "PLATFORM", "PATH"), *((r.name, r.platform, r.path) for r in found)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, platform, path in rows:
        print(f"{name:<{widths[0]}}  {platform:<{widths[1]}}  {path}")
    if not found:
        print(f"(no release under {queue.appdir})")
    return ExitCode.OK


def config_from_args(args: argparse.Namespace) -> PilotConfig:
    workdir = (args.workdir or Path.cwd() / f"pilot-{os.getpid()}").absolute()
    tag = parse_tag(args.version_tag)
    access_point = args.access_point.absolute() if args.access_point else None
    dispatcher = args.dispatcher or str(access_point)
    if not dispatcher.startswith(("http://", "https://")):
        dispatcher = str(Path(dispatcher).absolute())
    return PilotConfig(
        queue=args.queue, dispatcher=dispatcher, workdir=workdir, queue_file=args.queue_config,
        dispatcher_api=args.dispatcher_api, job_label=job_label(tag, args.job_label), resource_type=args.resource_type,
        computing_element=args.computing_element, max_jobs=args.max_jobs, lifetime=args.lifetime,
        max_no_job=args.max_no_job, no_job_wait=args.no_job_wait, max_failures=args.max_failures,
        stop_file=args.stop_file or workdir / "STOP", heartbeat=args.heartbeat, keep_workdirs=args.keep_workdirs,
        recovery=not args.no_recovery, lost_heartbeat=args.lost_heartbeat,
        pilot_id=pilot_id_field(args.pilot_id or f"{os.uname().nodename}:{os.getpid()}", tag),
        version_tag=tag.name, batch_id=args.batch_id, access_point=access_point, scheduler_id=args.scheduler_id,
        worker_heartbeat=args.worker_heartbeat, harvester_id=args.harvester_id, worker_id=args.worker_id,
        cacert=args.cacert, capath=args.capath,
        cert=args.cert, key=args.key, proxy=args.proxy, token_file=args.token_file, origin=args.origin,
        request_timeout=args.request_timeout, retry_budget=args.retry_budget,
        pcache_report_field=args.pcache_report_field,
    )


def recovery_areas(config: PilotConfig, queue: QueueConfig) -> list[Path]:
    """Where job recovery looks: the pilot's work directory and the queue's recovery_dir."""
    areas = [config.workdir]
    if queue.recovery_dir:
        areas.append(Path(queue.recovery_dir))
    return areas


def run_recovery(ctx: PilotContext, config: PilotConfig) -> Optional[int]:
    """The recovery pass; an exit code when it must end the pilot (refused credentials), else None."""
    from pilot.dispatcher.base import DispatcherError
    from recovery.jobrecovery import JobRecovery

    try:
        JobRecovery(ctx, recovery_areas(config, ctx.queue)).run()
    except DispatcherError as exc:
        log.error("the dispatcher refused us during recovery: %s", exc.diag)
        return ExitCode.CREDENTIALS
    return None


def run_pilot(config: PilotConfig, recover_only: bool = False, registry: Optional[Registry] = None) -> int:
    """Set up the pilot's collaborators, recover what dead pilots left (unless switched off), and run the
    loop (or only the recovery); returns the exit code. `registry`: the site movers (default: those
    installed, by entry point)."""
    from pilot.control import Control

    started = time.time()
    control = Control()
    control.install_signal_handlers()
    try:
        queue = QueueConfig.load(config.queue, config.queue_file)
    except ValueError as exc:
        log.error("%s", exc)
        return ExitCode.GENERAL
    try:
        area = WorkArea.hold(config.workdir)
    except OSError as exc:
        log.error("cannot create the work directory %s: %s", config.workdir, exc.strerror or exc)
        return ExitCode.MKDIR
    try:
        code = _run_held(config, queue, control, started, recover_only, registry)
    finally:
        area.release()
    log.info("pilot exits with code %d", code)
    return code


def _run_held(config: PilotConfig, queue: QueueConfig, control: Control, started: float, recover_only: bool,
              registry: Optional[Registry]) -> int:
    """run_pilot's part while the work directory is held."""
    from pilot.dispatcher import make_dispatcher
    from pilot.dispatcher.base import DispatcherError
    from pilot.jobrun import PilotContext
    from pilot.loop import Pilot
    from pilot.node import NodeInfo
    from pilot.proctrack import become_subreaper
    from sitemovers.registry import Registry

    if not become_subreaper():
        log.warning("cannot become a child subreaper: payload processes are tracked by polling only")
    lifetime = config.lifetime or queue.maxtime
    try:
        dispatcher = make_dispatcher(config, control.stopping)
    except (OSError, ValueError, DispatcherError) as exc:
        log.error("cannot set up the dispatcher %s: %s", config.dispatcher, exc)
        return ExitCode.GENERAL
    try:
        pcache = open_pcache(queue, control.cancel)
    except ValueError as exc:
        log.error("%s", exc)
        return ExitCode.GENERAL
    ctx = PilotContext(
        config=config, queue=queue, node=NodeInfo.probe(config.workdir), dispatcher=dispatcher,
        registry=registry or Registry(), control=control, deadline=started + lifetime if lifetime else None,
        pcache=pcache,
    )
    log.info("pandapilot %s (%s) on %s, queue %s, dispatcher %s, job label %s", __version__, config.version_tag,
             ctx.node.host, queue.name, config.dispatcher, config.job_label)
    try:
        code = run_recovery(ctx, config) if config.recovery or recover_only else None
        if code is None:
            code = ExitCode.OK if recover_only else Pilot(ctx).run()
    finally:
        dispatcher.close()
        if pcache is not None:
            pcache.close()
    return code


def open_pcache(queue: QueueConfig, cancel: threading.Event) -> Optional[Pcache]:
    """The node's file cache when the queue names one (None otherwise, or when it cannot be opened: the
    pilot then runs uncached). A bad setting raises ValueError."""
    from pilot.pcache import Pcache, PcacheSettings

    settings = PcacheSettings.from_queue(queue)
    if settings is None:
        return None
    try:
        # a payload under a switched identity is never root; with `none` it runs as the pilot does
        switched = queue.identity in ("uid", "glexec")
        return Pcache(settings, cancel=cancel, payload_as_root=not switched and os.geteuid() == 0)
    except (OSError, sqlite3.Error) as exc:
        log.warning("the node cache %s cannot be opened, running uncached: %s", settings.root, exc)
        return None


def main(argv: Optional[list[str]] = None, registry: Optional[Registry] = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.command == "run" and not (args.dispatcher or args.access_point):
        cli.error("run: --dispatcher (or --access-point) is required")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s | %(message)s")
    try:
        if args.command == "demo":
            from pilot.demo import run_demo

            return run_demo(args.dir)
        if args.command == "selftest":
            from pilot.selftest import main_selftest

            only = {name.strip() for name in args.only.split(",")} if args.only else None
            return main_selftest(args.bundle, args.compare, args.queue_config, args.python, args.dir, only,
                                 args.timeout)
        if args.command == "releases":
            return list_releases(args)
        return run_pilot(config_from_args(args), recover_only=args.command == "recover",
                         registry=registry)
    except KeyboardInterrupt:
        return 128 + 2
    except Exception:  # the last line of defence: a traceback in the log and the documented code
        log.exception("unexpected pilot failure")
        return ExitCode.EXCEPTION
