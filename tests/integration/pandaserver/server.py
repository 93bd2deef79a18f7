"""A real panda-server (PyPI) on loopback, for the pilot's integration tests.

``launch_panda_server(version)`` builds, in a fresh temp dir: throw-away certificates, a private
PostgreSQL cluster with the PanDA schema, ``panda_server.cfg``/``panda_common.cfg`` from the templates
shipped in the venv, and starts ``front.py`` (TLS WSGI front serving the unmodified
``pandaserver.server.panda:application``) with the venv's python. Everything binds 127.0.0.1.
Processes are stopped by the PIDs the harness holds.

Facts verified with this harness against panda-server 1.0.4 (v1 dialect) and 0.8.1 (legacy dialect)
(tests/integration/test_panda_harness.py replays the main ones):

Jobs and the queue
* Jobs are inserted with SQL: doma_panda.jobsactive4 (jobstatus 'activated') + jobparamstable +
  filestable4 (input rows status 'ready', output/log rows 'unknown'). minramcount/maxdiskcount must be
  0, not NULL, or a pilot that sends memory/disk_space never matches the job. Unknown sites fall back to
  the ``def_*`` settings (set to the test site here). An acquired job becomes 'sent'; the pilot's
  'running' update makes it 'running'. Any activated job of the site is handed out (highest priority,
  then lowest PandaID), so tests that need an empty queue call ``discard_pending_jobs()``.
* Job definition keys (both dialects, same values): PandaID, StatusCode, attemptNr, checksum, cloud,
  cmtConfig, coreCount, currentPriority, ddmEndPointIn, ddmEndPointOut, destinationDBlockToken,
  destinationDblock, destinationSE, dispatchDBlockToken, dispatchDBlockTokenForOut, dispatchDblock,
  fileDestinationSE, fsize, homepackage, inFiles, ioIntensity, ioIntensityUnit, jobDefinitionID, jobName,
  jobPars, jobsetID, logFile, logGUID, maxCpuCount, maxDiskCount, maxWalltime, minRamCount, nSent,
  nucleus, outFiles, processingType, prodDBlockToken, prodDBlocks, prodSourceLabel, prodUserID,
  realDatasets, realDatasetsIn, reqID, resource_type, scopeIn, scopeLog, scopeOut, sourceSite,
  swRelease, taskID, transferType, transformation, GUID. In JSON the counters (PandaID, attemptNr,
  coreCount, maxCpuCount, minRamCount, maxDiskCount, jobDefinitionID, jobsetID, currentPriority, nSent,
  StatusCode) are ints, ioIntensity* null, everything else strings; unset values are the string "NULL"
  (legacy urlencoded: all strings, None as "None"). File lists are comma-joined and positional; outFiles,
  destinationDblock, realDatasets, ddmEndPointOut, fileDestinationSE include the log file, scopeOut does
  NOT (it has one entry per non-log output; the log's scope is scopeLog).

v1 (1.0.4), always send ``Accept: application/json`` (and a JSON body)
* ``POST /api/v1/pilot/acquire_jobs`` ``{"site_name", "prod_source_label", "node", "computing_element",
  "memory": int, "disk_space": int, "n_jobs": int}`` -> ``{"success": true, "message": "", "data":
  {"StatusCode": 0, "jobs": [{job}]}}``; empty queue -> ``{"success": false, "message": "No jobs in
  PanDA", "data": null}``. Not-allowed DN -> ``{"success": false, "message": "no production/pilot role in
  VOMS FQANs or non pilot owner", "data": null}``; no client cert -> message "SSL secure connection is
  required". GET -> message "expecting POST, received GET". All HTTP 200.
* ``POST /api/v1/pilot/update_job`` ``{"job_id": int, "job_status", "attempt_nr": int, ...}`` ->
  ``{"success": true, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}``. Only job_id and
  job_status are required. Types are checked: ``"job_id": "5"`` -> success false "Type error: 'job_id'
  must be of type int, got str." (so form-encoded bodies only work for string-only calls); unknown field
  -> success false "Argument error: got an unexpected keyword argument 'x'"; bad job_status -> success
  false "Invalid job status: x", data {"StatusCode": 50}; not-allowed DN -> "production or pilot role
  required". A gzip body (Content-Encoding: gzip) is accepted. Without Accept the reply to a JSON body is
  still JSON (Content-Type text/plain), to a form body it is ``str(dict)`` (not JSON).
* ``GET /api/v1/pilot/get_job_status?job_ids=5`` -> data ``[{"job_id": 5, "status": "running",
  "attempt_number": 1}]``.

legacy (0.8.1), form-encoded
* ``POST /server/panda/getJob`` (siteName, prodSourceLabel, node, computingElement, mem, diskSpace) ->
  with ``Accept: application/json`` a flat JSON job dict incl. ``"StatusCode": 0``; without it the same
  urlencoded (``StatusCode=0&PandaID=...``). Empty queue -> ``{"StatusCode": 20, "errorDialog": "no jobs in
  PanDA"}``. Not-allowed DN and no client cert -> ``{"StatusCode": 60, "errorDialog": "no production/pilot
  role in VOMS FQANs or non pilot owner"}`` (urlencoded ``StatusCode=60``). HTTP 200.
* ``POST /server/panda/updateJob`` (jobId, state, attemptNr, xml=<JSON report>, node, siteName,
  transExitCode, pilotErrorCode, ...) -> ``{"StatusCode": 0, "command": "NULL"}`` / ``StatusCode=0&
  command=NULL``. Unknown field -> HTTP 500 "updateJob() got an unexpected keyword argument 'x'".
* ``POST /server/panda/getStatus`` ids=5 -> ``StatusCode=0&status=running&attemptNr=1``.
* On 1.0.4 the legacy endpoints answer HTTP 403 ``ERROR : method getJob is forbidden``.

Both dialects
* A wrong attempt number in an update (e.g. attemptNr 2 for attempt 1) is answered StatusCode 0 with
  ``command: tobekilled``; omitting it is accepted.
* job_output_report / xml: ``{lfn: {"guid", "fsize", "adler32" (8 hex, no "ad:"), "surl"}}``; guid is
  required (the Adder reads file_data["guid"]); fsize and a checksum are required for every output and
  the log, and every output/log of the job must be listed, else the Adder fails the job
  (ddmErrorCode 200, "expected output <lfn> is missing in pilot JSON").
* finished/failed are stored as 'holding'; ``run_adder()`` moves the job to jobsarchived4 (finished or
  failed) and sets fsize, checksum ("ad:<adler32>"), guid and status 'ready' on the output/log rows in
  filestable4 (rows stay in filestable4; a failed job's output/log rows become 'failed').
* Kill (``kill_job``): commandtopilot='tobekilled', taskbuffererrordiag 'killed by <DN>'; every later
  update reply (running or failed) carries ``command: tobekilled``; after the pilot reports failed and the
  Adder runs, the job ends 'cancelled' in jobsarchived4.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import requests

from .certs import CertSet, make_certs
from .postgres import DB_NAME, DB_USER, PostgresCluster, default_schema_dir, free_port, render_query, wait_for

log = logging.getLogger(__name__)

VERSIONS = {"1.0.4": "v1", "0.8.1": "legacy"}
DEFAULT_CACHE_ROOT = Path("/var/cache/pandapilot-ci")
HERE = Path(__file__).resolve().parent
JOB_TABLES = ("jobsdefined4", "jobswaiting4", "jobsactive4", "jobsarchived4")


def cache_root() -> Path:
    return Path(os.environ.get("PANDA_CI_CACHE", str(DEFAULT_CACHE_ROOT)))


def venv_dir(version: str) -> Path:
    return cache_root() / f"venv-{version}"


def venv_ready(version: str) -> bool:
    venv = venv_dir(version)
    return (venv / "bin" / "python").is_file() and (venv / "etc" / "panda" / "panda_server.cfg.rpmnew").is_file()


def _set_cfg_values(text: str, section: str, values: dict[str, str]) -> str:
    """Set ``key = value`` lines inside ``[section]`` of an ini text; missing keys are appended there."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\[[^\]]+\]\s*$", lines[i])), len(lines))
    remaining = dict(values)
    for i in range(start + 1, end):
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*=", lines[i])  # commented-out keys do not match
        if match and match.group(1) in remaining:
            key = match.group(1)
            lines[i] = f"{key} = {remaining.pop(key)}"
    extra = [f"{key} = {value}" for key, value in remaining.items()]
    lines[end:end] = ["", "# added by the pilot test harness", *extra, ""]
    return "\n".join(lines) + "\n"


@dataclass
class PandaServer:
    """A running panda-server on loopback. See the module docstring for the verified protocol facts."""

    version: str
    api: str
    url: str
    ca_cert: Path
    client_cert: Path
    client_key: Path
    proxy_file: Path
    bad_client_cert: Path
    bad_client_key: Path
    site: str
    client_dn: str = ""
    bad_client_dn: str = ""
    work_dir: Path = field(default=Path("."), repr=False)
    venv: Path = field(default=Path("."), repr=False)
    port: int = 0
    db: PostgresCluster | None = field(default=None, repr=False)
    server_cert: Path = field(default=Path("."), repr=False)
    server_key: Path = field(default=Path("."), repr=False)
    _front: subprocess.Popen | None = field(default=None, repr=False)

    # ---- paths / environment ---------------------------------------------------------------

    @property
    def panda_home(self) -> Path:
        return self.work_dir / "home"

    @property
    def log_dir(self) -> Path:
        return self.panda_home / "var" / "log" / "panda"

    @property
    def front_log(self) -> Path:
        return self.work_dir / "front.log"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def front_pid(self) -> int | None:
        return self._front.pid if self._front is not None and self._front.poll() is None else None

    def server_env(self) -> dict[str, str]:
        drop = (
            "PANDA",
            "X509_",
            "PYTHON",
            "VIRTUAL_ENV",
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "PG",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            PANDA_HOME=str(self.panda_home),
            PANDA_BEHIND_REAL_LB="1",
            PANDA_URL=f"{self.url}/server/panda",
            PANDA_URL_SSL=f"{self.url}/server/panda",
            PANDACACHE_URL=f"{self.url}/server/panda",
            HOME=str(self.panda_home),
            PYTHONUNBUFFERED="1",
            PATH=f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            NO_PROXY="127.0.0.1,localhost",
        )
        return env

    # ---- configuration -----------------------------------------------------------------------

    def write_config(self) -> None:
        etc = self.panda_home / "etc" / "panda"
        etc.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "pandacache").mkdir(parents=True, exist_ok=True)
        (self.panda_home / "keys").mkdir(exist_ok=True)
        template_dir = self.venv / "etc" / "panda"
        assert self.db is not None
        server_values = {
            "logdir": str(self.log_dir),
            "cache_dir": str(self.log_dir / "pandacache"),
            "home_dir_cwd": str(self.panda_home),
            "keyDir": str(self.panda_home / "keys"),
            "certdir": str(self.work_dir / "certs"),
            "backend": "postgres",
            "dbhost": "127.0.0.1",
            "dbport": str(self.db.port),
            "dbuser": DB_USER,
            "dbpasswd": self.db.password,
            "dbname": DB_NAME,
            "nDBConnection": "2",
            "schemaPANDA": "DOMA_PANDA",
            "schemaJEDI": "DOMA_PANDA",
            "schemaMETA": "DOMA_PANDAMETA",
            "schemaPANDAARCH": "DOMA_PANDAARCH",
            "schemaDEFT": "DOMA_DEFT",
            "pserverhost": "127.0.0.1",
            "pserverport": str(self.port),
            "pserverhosthttp": "127.0.0.1",
            "pserverporthttp": str(self.port),
            "pserverportcache": str(self.port),
            "pserveralias": "127.0.0.1",
            "token_authType": "None",
            "production_dns": self.client_dn,
            "pilot_owners": self.client_dn,
            "def_sitename": self.site,
            "def_queue": self.site,
            "def_nickname": self.site,
            "def_type": "production",
            "def_status": "online",
            "adder_plugins": "any:pandaserver.dataservice.adder_dummy_plugin:AdderDummyPlugin",
            "setupper_plugins": "any:pandaserver.dataservice.setupper_dummy_plugin:SetupperDummyPlugin",
            "entryVerbose": "False",
        }
        server_cfg = _set_cfg_values((template_dir / "panda_server.cfg.rpmnew").read_text(), "server", server_values)
        (etc / "panda_server.cfg").write_text(server_cfg)
        common_cfg = _set_cfg_values(
            (template_dir / "panda_common.cfg.rpmnew").read_text(), "logger", {"logdir": str(self.log_dir)}
        )
        (etc / "panda_common.cfg").write_text(common_cfg)

    # ---- WSGI front --------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        """Start (or restart) the TLS WSGI front on the same port."""
        if self.front_pid is not None:
            return
        argv = [
            str(self.python),
            str(HERE / "front.py"),
            "--port",
            str(self.port),
            "--cert",
            str(self.server_cert),
            "--key",
            str(self.server_key),
            "--ca",
            str(self.ca_cert),
        ]
        with self.front_log.open("ab") as log_handle:
            self._front = subprocess.Popen(
                argv,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.panda_home,
                env=self.server_env(),
                start_new_session=True,
            )
        log.info("panda-server %s front pid %d on %s", self.version, self._front.pid, self.url)
        proc = self._front

        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"panda-server front exited with {proc.returncode}:\n{self.log_tail(self.front_log)}"
                )

        context = ssl.create_default_context(cafile=str(self.ca_cert))

        def accepting() -> bool:
            # a full TLS handshake against the test CA: the front is up and presents its certificate
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    with context.wrap_socket(sock, server_hostname="127.0.0.1"):
                        return True
            except OSError:
                return False

        wait_for(accepting, timeout, f"panda-server {self.version} on port {self.port}", interval=0.2, check=alive)

    def stop(self, timeout: float = 20) -> None:
        """Stop the WSGI front only (the database keeps running): its process group, which holds the
        app's forked workers too (the front is a session leader; its PID is the group's ID)."""
        proc = self._front
        if proc is None:
            return
        log.info("stopping panda-server front pid %d and its process group", proc.pid)
        self._front = None
        deadline = time.monotonic() + timeout
        _signal_group(proc.pid, signal.SIGTERM)  # the front, and workers it may have left already
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
        killed = False
        while _group_alive(proc.pid):  # forked workers outlive the front by a moment
            if time.monotonic() > deadline:
                if killed:
                    raise RuntimeError(f"process group {proc.pid} of the front does not end")
                _signal_group(proc.pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + 10
            time.sleep(0.05)

    def shutdown(self, remove: bool = True) -> None:
        """Stop the front and the database, then remove the work dir."""
        try:
            self.stop()
        finally:
            try:
                if self.db is not None:
                    self.db.stop()
            finally:
                if remove and self.work_dir.exists():
                    shutil.rmtree(self.work_dir, ignore_errors=True)

    @staticmethod
    def log_tail(path: Path, n: int = 60) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ---- database helpers --------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[dict]:
        """Run one SQL statement (``%s`` placeholders) in panda_db; rows as dicts (lower-case keys).
        Unqualified table names resolve in doma_panda only if the query qualifies them; prefer
        ``doma_panda.<table>``."""
        assert self.db is not None
        return self.db.query(query, params)

    def insert_job(
        self,
        *,
        inputs: Iterable[dict] = (),
        outputs: Iterable[str] = (),
        transformation: str = "/bin/sh",
        job_pars: str = "",
        prod_source_label: str = "managed",
        attempt_nr: int = 1,
        max_cpu_count: int = 0,
        min_ram_count: int = 0,
        core_count: int = 1,
        site: str | None = None,
        max_disk_count: int = 0,
        priority: int = 1000,
        cmt_config: str | None = None,
        sw_release: str | None = None,
        home_package: str | None = None,
        processing_type: str = "pilot-ci",
        max_walltime: int | None = None,
    ) -> int:
        """Define one activated job the way the server's own submission leaves it; returns its PandaID.

        inputs: dicts {lfn, fsize, checksum ("ad:xxxxxxxx"), scope, guid?, dataset?, proddblock_token?};
        outputs: LFNs (scope "pilot-ci", dataset "pilot-ci.<PandaID>.out"); a log file row is added
        (lfn "pilot-ci.<PandaID>.log.tgz", scope "pilot-ci"), guids generated.
        """
        site = site or self.site
        panda_id = int(self.sql("SELECT nextval('doma_panda.jobsdefined4_pandaid_seq') AS id")[0]["id"])
        now = "(CURRENT_TIMESTAMP AT TIME ZONE 'UTC')"
        out_dataset = f"pilot-ci.{panda_id}.out"
        log_lfn = f"pilot-ci.{panda_id}.log.tgz"
        inputs = list(inputs)
        outputs = list(outputs)
        in_dataset = inputs[0].get("dataset", f"pilot-ci.{panda_id}.in") if inputs else "NULL"
        stmts = ["BEGIN;"]
        job_cols = {
            "pandaid": panda_id,
            "jobdefinitionid": panda_id,
            "jobsetid": panda_id,
            "schedulerid": None,
            "creationhost": "pilot-ci-harness",
            "transformation": transformation,
            "homepackage": home_package,
            "atlasrelease": sw_release,
            "cmtconfig": cmt_config,
            "prodsourcelabel": prod_source_label,
            "produserid": self.client_dn,
            "produsername": "pilot-ci",
            "assignedpriority": priority,
            "currentpriority": priority,
            "attemptnr": attempt_nr,
            "maxattempt": attempt_nr + 2,
            "jobstatus": "activated",
            "jobname": f"pilot-ci.{panda_id}",
            "maxcpucount": max_cpu_count,
            "maxcpuunit": "HS06sPerEvent",
            "maxdiskcount": max_disk_count,
            "maxdiskunit": "MB",
            "minramcount": min_ram_count,
            "minramunit": "MB",
            "computingsite": site,
            "proddblock": in_dataset,
            "destinationdblock": out_dataset,
            "destinationse": site,
            "corecount": core_count,
            "vo": "wlcg",
            "processingtype": processing_type,
            "gshare": "Test",
            "resource_type": "SCORE" if core_count <= 1 else "MCORE",
            "jobexecutionid": 0,
            "relocationflag": 0,
            "maxwalltime": max_walltime,
            "cloud": "WORLD",
            "nucleus": None,
            "jobparameters": None,
        }
        cols = ", ".join(job_cols) + ", creationtime, modificationtime, statechangetime"
        vals = ", ".join(["%s"] * len(job_cols)) + f", {now}, {now}, {now}"
        stmts.append(
            render_query(f"INSERT INTO doma_panda.jobsactive4 ({cols}) VALUES ({vals});", list(job_cols.values()))
        )
        stmts.append(
            render_query(
                "INSERT INTO doma_panda.jobparamstable (pandaid, modificationtime, jobparameters) "
                f"VALUES (%s, {now}, %s);",
                (panda_id, job_pars),
            )
        )

        def file_row(
            lfn: str,
            ftype: str,
            *,
            dataset: str,
            scope: str,
            fsize: int = 0,
            checksum: str | None = None,
            guid: str | None = None,
            status: str,
            token: str | None = None,
        ) -> str:
            row = {
                "pandaid": panda_id,
                "guid": guid or str(uuid.uuid4()),
                "lfn": lfn,
                "type": ftype,
                "dataset": dataset,
                "status": status,
                "proddblock": dataset if ftype == "input" else None,
                "proddblocktoken": token,
                "dispatchdblock": f"{dataset}_dis" if ftype == "input" else None,
                "destinationdblock": f"{dataset}_sub0" if ftype != "input" else None,
                "destinationdblocktoken": None,
                "destinationse": site,
                "fsize": fsize,
                "checksum": checksum,
                "scope": scope,
                "attemptnr": 0,
            }
            cols = "row_id, modificationtime, " + ", ".join(row)
            vals = f"nextval('doma_panda.filestable4_row_id_seq'), {now}, " + ", ".join(["%s"] * len(row))
            return render_query(f"INSERT INTO doma_panda.filestable4 ({cols}) VALUES ({vals});", list(row.values()))

        for spec in inputs:
            stmts.append(
                file_row(
                    spec["lfn"],
                    "input",
                    dataset=spec.get("dataset", in_dataset),
                    scope=spec.get("scope", "pilot-ci"),
                    fsize=int(spec.get("fsize", 0)),
                    checksum=spec.get("checksum"),
                    guid=spec.get("guid"),
                    status="ready",
                    token=spec.get("proddblock_token"),
                )
            )
        for lfn in outputs:
            stmts.append(file_row(lfn, "output", dataset=out_dataset, scope="pilot-ci", status="unknown"))
        stmts.append(file_row(log_lfn, "log", dataset=out_dataset, scope="pilot-ci", status="unknown"))
        stmts.append("COMMIT;")
        assert self.db is not None
        self.db.psql("\n".join(stmts) + "\n")
        log.info("inserted job %d for %s (%d in, %d out)", panda_id, site, len(inputs), len(outputs))
        return panda_id

    def discard_pending_jobs(self) -> int:
        """Remove every not-yet-dispatched ('activated') job, so a test starts from an empty queue."""
        rows = self.sql("DELETE FROM doma_panda.jobsactive4 WHERE jobstatus = 'activated' RETURNING pandaid")
        for row in rows:
            self.sql("DELETE FROM doma_panda.filestable4 WHERE pandaid = %s", (row["pandaid"],))
        return len(rows)

    def job_state(self, panda_id: int) -> dict:
        """The job's row plus "table" (where it is now: jobsdefined4/jobswaiting4/jobsactive4/jobsarchived4
        or doma_pandaarch.jobsarchived); {} if unknown. Keys are the lower-case column names; values as
        PostgreSQL renders them in JSON: numbers for numeric columns (piloterrorcode, attemptnr, ...),
        strings for varchar ones (transexitcode is varchar: "0"), ISO strings for timestamps, None for NULL."""
        for table in JOB_TABLES:
            rows = self.sql(f"SELECT * FROM doma_panda.{table} WHERE pandaid = %s", (panda_id,))
            if rows:
                return {"table": table, **rows[0]}
        rows = self.sql("SELECT * FROM doma_pandaarch.jobsarchived WHERE pandaid = %s", (panda_id,))
        if rows:
            return {"table": "doma_pandaarch.jobsarchived", **rows[0]}
        return {}

    def files(self, panda_id: int) -> list[dict]:
        rows = self.sql("SELECT * FROM doma_panda.filestable4 WHERE pandaid = %s ORDER BY row_id", (panda_id,))
        rows += self.sql("SELECT * FROM doma_pandaarch.filestable_arch WHERE pandaid = %s ORDER BY row_id", (panda_id,))
        return rows

    # ---- server-side actions -----------------------------------------------------------------

    def run_adder(self, timeout: float = 180) -> list[list]:
        """One pass of the server's Adder (see adder_once.py); returns [[PandaID, status, attemptNr], ...]."""
        t0 = time.monotonic()
        res = subprocess.run(
            [str(self.python), str(HERE / "adder_once.py")],
            capture_output=True,
            text=True,
            cwd=self.panda_home,
            env=self.server_env(),
            timeout=timeout,
        )
        if res.returncode != 0:
            raise RuntimeError(f"adder pass failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        last = [line for line in res.stdout.splitlines() if line.startswith("{")]
        processed = json.loads(last[-1])["processed"] if last else []
        log.info("adder pass processed %s in %.1fs", processed, time.monotonic() - t0)
        return processed

    def kill_job(self, panda_id: int, code: int | None = None) -> str:
        """Server-side kill with the production DN, through the real kill API where it works.

        v1 (1.0.4): ``POST /api/v1/job/kill`` ``{"job_ids": [id]}`` sets commandtopilot='tobekilled'
        on a running job. Legacy (0.8.1): ``POST /server/panda/killJobs`` (``ids`` = pickled list) is
        broken on PostgreSQL in 0.8.1 for any job not in jobsDefined4: its NOWAIT emulation raises
        LockNotAvailable when the first table probed (jobsDefined4) has no row, so the reply is
        ``[False]``; fixed in 1.0.x. The harness then does in SQL what the server's killJob does
        for a running job: commandtopilot='tobekilled', taskbuffererrordiag='killed by <DN>'.
        Either way the pilot sees ``command=tobekilled`` in its next update reply.
        Returns "api" or "sql" (which path set the command).
        """
        session = self.session()
        if self.api == "v1":
            body: dict[str, Any] = {"job_ids": [panda_id]}
            if code is not None:
                body["code"] = code
            resp = session.post(
                f"{self.url}/api/v1/job/kill", json=body, headers={"Accept": "application/json"}, timeout=60
            )
            resp.raise_for_status()
            result = resp.json()
            if result.get("success") and all(result.get("data") or [False]):
                return "api"
            log.warning("kill API answered %s for %d", result, panda_id)
        else:
            data = {"ids": pickle.dumps([panda_id], protocol=0).decode()}
            if code is not None:
                data["code"] = str(code)
            resp = session.post(f"{self.url}/server/panda/killJobs", data=data, timeout=60)
            resp.raise_for_status()
            result = _unpickle_plain(resp.text)
            if isinstance(result, list) and result and all(result):
                return "api"
            log.info("legacy killJobs answered %r for %d; setting the kill command in SQL", result, panda_id)
        rows = self.sql(
            "UPDATE doma_panda.jobsactive4 SET commandtopilot = 'tobekilled', taskbuffererrordiag = %s "
            "WHERE pandaid = %s RETURNING pandaid",
            (f"killed by {self.client_dn}", panda_id),
        )
        if not rows:
            raise RuntimeError(f"job {panda_id} is not in jobsactive4; cannot set the kill command")
        return "sql"

    def session(self, allowed: bool = True) -> requests.Session:
        """A requests session with the allowed (or the not-allowed) client certificate and the CA."""
        session = requests.Session()
        session.verify = str(self.ca_cert)
        session.cert = (
            (str(self.client_cert), str(self.client_key))
            if allowed
            else (str(self.bad_client_cert), str(self.bad_client_key))
        )
        session.trust_env = False
        return session


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only builtin containers and scalars (legacy replies are protocol-0 pickles)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle_plain(text: str) -> Any:
    try:
        return _PlainUnpickler(io.BytesIO(text.encode())).load()
    except Exception:  # not a pickle: return the text as it is
        return text


def launch_panda_server(
    version: str, *, site: str = "TEST_SITE", base_dir: Path | None = None, schema_dir: Path | None = None
) -> PandaServer:
    """Start PostgreSQL + a panda-server ``version`` front; the caller must call ``shutdown()``."""
    if version not in VERSIONS:
        raise ValueError(f"unsupported panda-server version {version}; known: {sorted(VERSIONS)}")
    venv = venv_dir(version)
    if not venv_ready(version):
        raise FileNotFoundError(f"{venv} missing: run .ci/provision-panda-server.sh")
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"panda-server-{version}-", dir=base_dir))
    work.chmod(0o755)  # the postgres OS user must traverse it
    certs: CertSet = make_certs(work / "certs")
    port = free_port()
    server = PandaServer(
        version=version,
        api=VERSIONS[version],
        url=f"https://127.0.0.1:{port}",
        ca_cert=certs.ca_cert,
        client_cert=certs.client_cert,
        client_key=certs.client_key,
        proxy_file=certs.proxy_file,
        bad_client_cert=certs.bad_client_cert,
        bad_client_key=certs.bad_client_key,
        site=site,
        client_dn=certs.client_dn,
        bad_client_dn=certs.bad_client_dn,
        work_dir=work,
        venv=venv,
        port=port,
        db=PostgresCluster(work / "pg"),
        server_cert=certs.server_cert,
        server_key=certs.server_key,
    )
    try:
        assert server.db is not None
        server.db.init()
        server.db.start()
        server.db.load_panda_schema(schema_dir or default_schema_dir(), work)
        server.write_config()
        server.start()
    except BaseException:
        log.error(
            "panda-server %s failed to start; front log:\n%s\npostgres log:\n%s",
            version,
            server.log_tail(server.front_log),
            server.db.log_tail() if server.db else "",
        )
        server.shutdown(remove=os.environ.get("PANDA_CI_KEEP_FAILED") is None)
        raise
    log.info("panda-server %s up at %s in %.1fs (work dir %s)", version, server.url, time.monotonic() - t0, work)
    return server


__all__ = ["PandaServer", "launch_panda_server", "venv_ready", "venv_dir", "cache_root", "VERSIONS"]

if __name__ == "__main__":  # manual use: python -m tests.integration.pandaserver.server 1.0.4
    logging.basicConfig(level=logging.INFO)
    srv = launch_panda_server(sys.argv[1] if len(sys.argv) > 1 else "1.0.4")
    print(srv)
    try:
        input("press enter to stop\n")
    finally:
        srv.shutdown()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone (or the number is no longer ours)
        return False
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
