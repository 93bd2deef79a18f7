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

CACHE_ROOT="${PANDA_CI_CACHE:-/var/cache/pandapilot-ci}"
PYTHON="${PANDA_CI_PYTHON:-python3.11}"
VERSIONS=("1.0.4" "0.8.1")
APT_PACKAGES=(postgresql postgresql-15 postgresql-contrib postgresql-15-cron postgresql-15-partman
              apache2-dev openssl ca-certificates build-essential)

log() { printf '[provision-panda-server] %s\n' "$*"; }

if [[ "$(id -u)" != "0" ]]; then
    log "must run as root"; exit 1
fi

start=$(date +%s)

# --- Debian packages ----------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if (( ${#missing[@]} )); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "apt packages already installed"
fi
# The Debian package starts a system cluster on 5432; the harness runs its own private cluster
# and does not need it (left as it is: we do not stop services we did not start).

# --- users ----------------------------------------------------------------------------------------
if ! getent group zp >/dev/null; then
    log "creating group zp"; groupadd --system zp
fi
if ! id atlpan >/dev/null 2>&1; then
    log "creating user atlpan"; useradd --system --gid zp --no-create-home --shell /usr/sbin/nologin atlpan
fi
id postgres >/dev/null 2>&1 || { log "OS user postgres missing after install"; exit 1; }

# --- venvs ----------------------------------------------------------------------------------------
mkdir -p "$CACHE_ROOT/pip-cache"
command -v "$PYTHON" >/dev/null || { log "$PYTHON not found on PATH"; exit 1; }
PY_BIN="$(command -v "$PYTHON")"
# pyenv shims: resolve the real interpreter so the venv does not depend on the shim.
PY_REAL="$("$PY_BIN" -c 'import sys; print(sys.executable)')"

# pip, quiet, without the warnings about index locations configured on some machines but absent.
quiet_pip() {
    local venv="$1"; shift
    local out rc=0
    out="$("$venv/bin/python" -m pip install -q --cache-dir "$CACHE_ROOT/pip-cache" "$@" 2>&1)" || rc=$?
    if [[ -n "$out" ]]; then
        grep -v -e "is ignored: it is neither a file nor a directory" <<<"$out" || true
    fi
    return "$rc"
}

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

for v in "${VERSIONS[@]}"; do
    venv="$CACHE_ROOT/venv-$v"
    if venv_ok "$venv" "$v"; then
        log "venv $venv ok (panda-server $v)"
        continue
    fi
    log "building venv $venv (panda-server $v)"
    rm -rf "$venv"
    "$PY_REAL" -m venv "$venv"
    quiet_pip "$venv" --upgrade pip setuptools wheel
    # DISABLE_MM=1: panda-server's build hook otherwise tries a Mattermost upgrade notification
    # (git calls, ~/mm_webhook_url.txt, network). Its mod_wsgi dependency is compiled against apxs
    # (apache2-dev, build-essential) although the harness serves the app with its own TLS WSGI
    # front (tests/integration/pandaserver/front.py), not Apache.
    DISABLE_MM=1 quiet_pip "$venv" "panda-server[postgres]==$v" "cryptography"
    if ! venv_ok "$venv" "$v"; then
        log "venv $venv failed its import check; details:"
        "$venv/bin/python" -c 'import pandaserver, pandacommon, psycopg2, cryptography' || true
        exit 1
    fi
    log "venv $venv ready"
done

log "done in $(( $(date +%s) - start )) s (cache root $CACHE_ROOT)"
