"""A private PostgreSQL 15 cluster on 127.0.0.1 with the PanDA schema loaded.

initdb refuses to run as root, so the cluster runs as the ``postgres`` OS user (``setpriv``, which
execs, so the PID we hold is the postmaster's own and it is stopped by that PID). The harness talks
to it with the ``psql`` client over the cluster's private unix socket (trust auth for the local
socket; TCP on 127.0.0.1 needs the ``panda`` password, which is what panda-server uses).

Schema: PanDAWMS/panda-database (``shared/third_party/panda-database/schema/postgres``), copied
to a temp dir and patched there:
  * ``init_step.sql``: ``${PANDA_DB_PASSWORD}`` substituted;
  * ``pg_PARTITION.sql``: Debian 12 ships pg_partman 4.7, whose ``create_parent`` wants
    ``p_type => 'native'`` where the schema (written for 5.x) says ``'range'``.
Load order as in the upstream installer: init_step, then for each component the files
``pg_<COMP><SUB>.sql``, then the version row, then post_step_panda and post_step_cron.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_NAME = "panda_db"
DB_USER = "panda"
SCHEMA_COMPONENTS = ("PANDA", "PANDAMETA", "PANDAARCH", "PANDABIGMON", "DEFT", "PARTITION")
SCHEMA_SUFFIXES = (
    "",
    "_TABLE",
    "_VIEW",
    "_TYPE",
    "_SEQUENCE",
    "_FUNCTION",
    "_TRIGGER",
    "_SCHEDULER_JOBS",
    "_PROCEDURE",
)

# Errors that the upstream schema (0.1.6) produces and that do not matter for the job dispatch path:
# (file, message pattern). The GPU summary materialized view joins a table the schema never creates;
# it is the last statement block of its file, so the file's own ON_ERROR_STOP skips nothing else.
KNOWN_HARMLESS_ERRORS = (
    ("pg_PANDA_SCHEDULER_JOBS.sql", re.compile(r'relation "doma_panda\.worker_node_queue" does not exist')),
)


def default_schema_dir() -> Path:
    """The panda-database schema dir: $PANDA_DB_SCHEMA_DIR, else shared/third_party beside the repo."""
    env = os.environ.get("PANDA_DB_SCHEMA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    for base in (repo.parent, repo):
        candidate = base / "shared" / "third_party" / "panda-database" / "schema" / "postgres"
        if candidate.is_dir():
            return candidate
    return Path("/work/shared/third_party/panda-database/schema/postgres")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1, check=None) -> None:
    """Poll ``predicate`` until true or ``timeout`` seconds; ``check`` may raise early (dead process)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _quote_literal(value: Any) -> str:
    """SQL literal for a Python value (used to inline parameters into psql input)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "\x00" in text:
        raise ValueError("NUL byte in SQL parameter")
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_query(query: str, params: Sequence[Any] = ()) -> str:
    """Inline ``params`` into ``query`` (psycopg2 style: ``%s`` placeholders, ``%%`` for a literal ``%``)."""
    values = iter(params)
    used = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal used
        if match.group(0) == "%%":
            return "%"
        used += 1
        try:
            return _quote_literal(next(values))
        except StopIteration:
            raise ValueError("more %s placeholders than params") from None

    text = re.sub(r"%%|%s", substitute, query)
    if used != len(params):
        raise ValueError(f"query has {used} placeholders, got {len(params)} params")
    return text


@dataclass
class PostgresCluster:
    base_dir: Path
    port: int = field(default_factory=free_port)
    password: str = "panda-ci-password"
    pid: int | None = None
    _proc: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgresql.log"

    def _as_postgres(self, argv: Sequence[str]) -> list[str]:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        shutil.chown(self.base_dir, "postgres", "postgres")
        shutil.chown(self.socket_dir, "postgres", "postgres")
        self.base_dir.chmod(0o755)
        log.info("initdb %s", self.data_dir)
        subprocess.run(
            self._as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            cwd=self.base_dir,
            env=self._env(),
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "shared_preload_libraries": "'pg_cron, pg_partman_bgw'",
            "cron.database_name": "'postgres'",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# panda-server test harness\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["HOME"] = str(self.base_dir)
        env["LC_ALL"] = "C.UTF-8"
        return env

    def start(self, timeout: float = 60) -> None:
        log_handle = self.log_file.open("ab")
        try:
            self._proc = subprocess.Popen(
                self._as_postgres([str(PG_BIN / "postgres"), "-D", str(self.data_dir)]),
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base_dir,
                env=self._env(),
                start_new_session=True,
            )
        finally:
            log_handle.close()
        self.pid = self._proc.pid
        log.info("postgres pid %d port %d", self.pid, self.port)

        def alive() -> None:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}:\n{self.log_tail()}")

        def ready() -> bool:
            res = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            return res.returncode == 0

        wait_for(ready, timeout, "postgres to accept connections", check=alive)

    def stop(self, timeout: float = 30) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            log.info("stopping postgres pid %d", self._proc.pid)
            os.kill(self._proc.pid, 2)  # SIGINT: fast shutdown
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, 9)
                self._proc.wait(10)
        self._proc = None
        self.pid = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ---- psql -------------------------------------------------------------------------------

    def psql(
        self,
        sql: str | None = None,
        *,
        file: Path | None = None,
        db: str = DB_NAME,
        user: str = "postgres",
        on_error_stop: bool = True,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            user,
            "-d",
            db,
            "-v",
            f"ON_ERROR_STOP={1 if on_error_stop else 0}",
            "-At",
        ]
        if file is not None:
            argv += ["-f", str(file)]
        res = subprocess.run(
            argv,
            input=sql if file is None else None,
            capture_output=True,
            text=True,
            cwd=file.parent if file is not None else self.base_dir,
            env=self._env(),
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"psql failed ({res.returncode}): {res.stderr.strip()}\n--- input ---\n{(sql or str(file))[:2000]}"
            )
        return res

    def query(self, query: str, params: Sequence[Any] = (), db: str = DB_NAME) -> list[dict[str, Any]]:
        """Run one statement; rows (if any) come back as dicts with lower-case column names."""
        stmt = render_query(query, params).strip().rstrip(";")
        if re.match(r"(?is)^(select|with|values)\b", stmt) or re.search(r"(?is)\breturning\b", stmt):
            # a top-level CTE may hold a SELECT or a data-modifying statement with RETURNING
            out = self.psql(
                f"WITH _q AS ({stmt}) SELECT coalesce(json_agg(_q), '[]'::json) FROM _q;\n", db=db
            ).stdout.strip()
            return json.loads(out) if out else []
        self.psql(stmt + ";\n", db=db)
        return []

    # ---- schema ----------------------------------------------------------------------------

    def load_panda_schema(self, schema_dir: Path, work_dir: Path) -> None:
        """Copy, patch and load the panda-database schema (see module docstring)."""
        sql_src = schema_dir / "sqls"
        version = (schema_dir / "version").read_text().strip()
        work = work_dir / "schema"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(sql_src, work)
        init_step = work / "init_step.sql"
        init_step.write_text(init_step.read_text().replace("${PANDA_DB_PASSWORD}", self.password))
        partition = work / "pg_PARTITION.sql"
        partition.write_text(re.sub(r"p_type\s*=>\s*'range'", "p_type => 'native'", partition.read_text()))

        t0 = time.monotonic()
        # init_step connects to the maintenance DB and switches to panda_db itself (\c)
        self._load_file(init_step, db="postgres")
        for comp in SCHEMA_COMPONENTS:
            for suffix in SCHEMA_SUFFIXES:
                path = work / f"pg_{comp}{suffix}.sql"
                if path.is_file():
                    self._load_file(path)
        major, minor, patch = (int(x) for x in version.split("."))
        # the server's SchemaChecker reads component 'PanDA'; JEDI reads 'JEDI'
        for component in ("PanDA", "JEDI"):
            self.query(
                "INSERT INTO doma_panda.pandadb_version (component, major, minor, patch) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (component) DO NOTHING",
                (component, major, minor, patch),
            )
        self._load_file(work / "post_step_panda.sql")
        self._load_file(work / "post_step_cron.sql", db="postgres")
        log.info("schema %s loaded in %.1fs", version, time.monotonic() - t0)

    def _load_file(self, path: Path, db: str = DB_NAME) -> None:
        # run the whole file; the files set ON_ERROR_STOP themselves where upstream wants it,
        # here every error is collected and only known-harmless ones are tolerated.
        res = self.psql(file=path, db=db, on_error_stop=False, check=False)
        errors = [line for line in res.stderr.splitlines() if "ERROR:" in line]
        bad = [e for e in errors if not any(f == path.name and p.search(e) for f, p in KNOWN_HARMLESS_ERRORS)]
        if errors:
            log.info("%s: %d error(s), tolerated: %s", path.name, len(errors), [e for e in errors if e not in bad])
        if bad or (res.returncode != 0 and not errors):
            raise RuntimeError(f"loading {path.name} failed (rc={res.returncode}):\n{res.stderr[-4000:]}")


def iter_lower(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k.lower(): v for k, v in row.items()} for row in rows]
