#!/usr/bin/env bash
# Provision what the pilot's integration tests need to run a REAL panda-server on loopback:
#   - Debian packages: PostgreSQL 15 with pg_cron and pg_partman, apache2-dev (panda-server's
#     mod_wsgi dependency compiles against apxs), openssl.
#   - group `zp` and user `atlpan` (panda-server's build hook chowns to them when pip runs as root).
#   - two venvs, one per protocol dialect:
#       $PANDA_CI_CACHE/venv-1.0.4  panda-server[postgres]==1.0.4  (v1 API, /api/v1/...)
#       $PANDA_CI_CACHE/venv-0.8.1  panda-server[postgres]==0.8.1  (legacy API, /server/panda/...)
#     with a persistent pip cache in $PANDA_CI_CACHE/pip-cache so that a re-run is fast.
# Idempotent: packages already present and venvs that import fine are left alone.
# Run as root on Debian 12. The test fixtures (tests/integration/conftest.py) look for the venvs
# in the same place (default /var/cache/pandapilot-ci, override with PANDA_CI_CACHE).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ci_init provision-panda-server

VERSIONS=("1.0.4" "0.8.1")

# --- Debian packages ----------------------------------------------------------------------------
apt_install_missing --no-install-recommends postgresql postgresql-15 postgresql-contrib postgresql-15-cron \
    postgresql-15-partman apache2-dev openssl ca-certificates build-essential
# The Debian package starts a system cluster on 5432; the harness runs its own private cluster
# and does not need it (left as it is: we do not stop services we did not start).

# --- users ----------------------------------------------------------------------------------------
if ! getent group zp >/dev/null; then
    log "creating group zp"; groupadd --system zp
fi
if ! id atlpan >/dev/null 2>&1; then
    log "creating user atlpan"; useradd --system --gid zp --no-create-home --shell /usr/sbin/nologin atlpan
fi
id postgres >/dev/null 2>&1 || die "OS user postgres missing after install"

# --- venvs ----------------------------------------------------------------------------------------
venv_ok() {
    local venv="$1" version="$2"
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "$version" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("panda-server") == sys.argv[1], version("panda-server")
import os
import psycopg2, cryptography  # noqa: F401  (postgres backend; certificate DN handling in front.py)
import pandaserver, pandacommon  # noqa: F401  (the app itself needs its config files to import)
# the config templates the harness copies at run time
for name in ("panda_server.cfg.rpmnew", "panda_common.cfg.rpmnew"):
    assert os.path.isfile(os.path.join(sys.prefix, "etc", "panda", name)), name
PY
}

# DISABLE_MM=1: panda-server's build hook otherwise tries a Mattermost upgrade notification
# (git calls, ~/mm_webhook_url.txt, network). Its mod_wsgi dependency is compiled against apxs
# (apache2-dev, build-essential) although the harness serves the app with its own TLS WSGI
# front (tests/integration/pandaserver/front.py), not Apache.
install_server() {
    local venv="$1" version="$2"
    pip_quiet "$venv" --upgrade pip setuptools wheel &&
        DISABLE_MM=1 pip_quiet "$venv" "panda-server[postgres]==$version" "cryptography"
}

PY_REAL="$(real_python "$CI_PYTHON")"
for v in "${VERSIONS[@]}"; do
    ensure_venv "$CACHE_ROOT/venv-$v" "$PY_REAL" venv_ok install_server "$v"
done
ci_done
