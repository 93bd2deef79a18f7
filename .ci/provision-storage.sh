#!/usr/bin/env bash
# Provision what the storage tests need to run REAL storage on loopback:
#   - Debian packages: XRootD server and client (with its HTTP plugin, XrdHttp, for dav://), gfal2 with
#     its Python module (python3-gfal2) and the xrootd, http and file plugins.
#   - two venvs (the server and client wheels ship the same `rucio` import package, so they never share one):
#       $PANDA_CI_CACHE/rucio-server-41.5.1   rucio==41.5.1 + gunicorn (SQLite backend)
#       $PANDA_CI_CACHE/rucio-clients-41.5.1  rucio-clients==41.5.1, built on /usr/bin/python3 so that
#                                             any account can run it (the pilot's rucio mover calls it)
#     with the persistent pip cache of $PANDA_CI_CACHE/pip-cache.
# Idempotent: packages already present and venvs that import fine are left alone.
# Run as root on Debian 12. The test fixtures (tests/servers/) look for the venvs in the same place.
set -euo pipefail

CACHE_ROOT="${PANDA_CI_CACHE:-/var/cache/pandapilot-ci}"
RUCIO_VERSION=41.5.1
SERVER_PYTHON="${PANDA_CI_PYTHON:-python3.11}"
CLIENT_PYTHON=/usr/bin/python3
APT_PACKAGES=(xrootd-server xrootd-client xrootd-plugins python3-gfal2 gfal2 gfal2-plugin-xrootd
              gfal2-plugin-http gfal2-plugin-file python3-venv)

log() { printf '[provision-storage] %s\n' "$*"; }

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
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "apt packages already installed"
fi

# --- venvs ----------------------------------------------------------------------------------------
mkdir -p "$CACHE_ROOT/pip-cache"

quiet_pip() {
    local venv="$1"; shift
    local out rc=0
    out="$("$venv/bin/python" -m pip install -q --disable-pip-version-check --cache-dir "$CACHE_ROOT/pip-cache" \
           "$@" 2>&1)" || rc=$?
    if [[ -n "$out" ]]; then
        grep -v -e "is ignored: it is neither a file nor a directory" <<<"$out" || true
    fi
    return "$rc"
}

# venv_ok VENV DISTRIBUTION MODULE...: the distribution has the pinned version and the modules import
venv_ok() {
    local venv="$1" dist="$2"; shift 2
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "$dist" "$RUCIO_VERSION" "$@" <<'PY' >/dev/null 2>&1
import importlib, sys
from importlib.metadata import version
assert version(sys.argv[1]) == sys.argv[2]
for name in sys.argv[3:]:
    importlib.import_module(name)
PY
}

build_venv() {  # build_venv VENV PYTHON DISTRIBUTION MODULES -- PIP-ARGS...
    local venv="$1" python="$2" dist="$3" modules="$4"; shift 5
    # shellcheck disable=SC2086
    if venv_ok "$venv" "$dist" $modules; then
        log "venv $venv ok ($dist $RUCIO_VERSION)"; return 0
    fi
    log "building venv $venv ($dist $RUCIO_VERSION)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    quiet_pip "$venv" "$@"
    # shellcheck disable=SC2086
    venv_ok "$venv" "$dist" $modules || { log "venv $venv failed its import check"; exit 1; }
    chmod -R a+rX "$venv"
}

command -v "$SERVER_PYTHON" >/dev/null || { log "$SERVER_PYTHON not found on PATH"; exit 1; }
SERVER_REAL="$("$SERVER_PYTHON" -c 'import sys; print(sys.executable)')"  # past a pyenv shim
build_venv "$CACHE_ROOT/rucio-server-$RUCIO_VERSION" "$SERVER_REAL" rucio \
    "rucio flask sqlalchemy gunicorn" -- "rucio==$RUCIO_VERSION" gunicorn
build_venv "$CACHE_ROOT/rucio-clients-$RUCIO_VERSION" "$CLIENT_PYTHON" rucio-clients \
    "rucio.client.downloadclient rucio.client.uploadclient" -- "rucio-clients==$RUCIO_VERSION"

log "done in $(( $(date +%s) - start )) s (cache root $CACHE_ROOT)"
