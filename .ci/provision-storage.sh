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
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ci_init provision-storage

RUCIO_VERSION=41.5.1
CLIENT_PYTHON=/usr/bin/python3

# --- Debian packages ----------------------------------------------------------------------------
apt_install_missing --no-install-recommends xrootd-server xrootd-client xrootd-plugins python3-gfal2 gfal2 \
    gfal2-plugin-xrootd gfal2-plugin-http gfal2-plugin-file python3-venv

# --- venvs ----------------------------------------------------------------------------------------
# venv_ok VENV DISTRIBUTION MODULES: the distribution has the pinned version and the modules import
venv_ok() {
    local venv="$1" dist="$2" modules="$3"
    [[ -x "$venv/bin/python" ]] || return 1
    # shellcheck disable=SC2086
    "$venv/bin/python" - "$dist" "$RUCIO_VERSION" $modules <<'PY' >/dev/null 2>&1
import importlib, sys
from importlib.metadata import version
assert version(sys.argv[1]) == sys.argv[2]
for name in sys.argv[3:]:
    importlib.import_module(name)
PY
}

install_rucio() {  # install_rucio VENV DISTRIBUTION MODULES: the pinned distribution (+ gunicorn for the server)
    local venv="$1" dist="$2"
    if [[ $dist == rucio ]]; then
        pip_quiet "$venv" "rucio==$RUCIO_VERSION" gunicorn || return
    else
        pip_quiet "$venv" "$dist==$RUCIO_VERSION" || return
    fi
    chmod -R a+rX "$venv"
}

ensure_venv "$CACHE_ROOT/rucio-server-$RUCIO_VERSION" "$(real_python "$CI_PYTHON")" venv_ok install_rucio \
    rucio "rucio flask sqlalchemy gunicorn"
ensure_venv "$CACHE_ROOT/rucio-clients-$RUCIO_VERSION" "$CLIENT_PYTHON" venv_ok install_rucio \
    rucio-clients "rucio.client.downloadclient rucio.client.uploadclient"
ci_done
