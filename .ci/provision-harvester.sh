#!/usr/bin/env bash
# Provision Harvester, the PanDA pilot factory, for the launch tests (tests/integration/harvester.py):
#   $PANDA_CI_CACHE/venv-harvester   pandaharvester 0.7.5 (HSF/harvester commit d561b72f; not on PyPI)
# The source is the unmodified upstream tarball: $HARVESTER_SOURCE if set, else the copy kept beside the
# repository (../shared/third_party/harvester, as CI lays it out), else upstream's archive of that commit.
# Its dependencies come from PyPI (persistent pip cache in $PANDA_CI_CACHE/pip-cache). Harvester is
# configured and started by the tests (SQLite, v1 against the loopback panda-server, Slurm submitter).
# Idempotent: a venv that imports fine is left alone. Run as root on Debian 12 (after provision-slurm.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ci_init provision-harvester

COMMIT=d561b72f
UPSTREAM="https://github.com/HSF/harvester/archive/${COMMIT}.tar.gz"
VENV="$CACHE_ROOT/venv-harvester"

venv_ok() {
    local venv="$1"
    [[ -x "$venv/bin/python" ]] || return 1
    local site home rc=0
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    # Harvester's modules read their configuration at import: a throw-away PANDA_HOME with the shipped templates
    home=$(mktemp -d)
    mkdir -p "$home/etc/panda"
    for template in "$venv"/etc/panda/*.cfg.rpmnew; do
        [[ -f $template ]] && cp "$template" "$home/etc/panda/$(basename "$template" .rpmnew)"
    done
    [[ -f $home/etc/panda/panda_common.cfg ]] && sed -i "s#^logdir *=.*#logdir = $home#" "$home/etc/panda/panda_common.cfg"
    PANDA_HOME="$home" PYTHONPATH="$site/pandacommon:$site" "$venv/bin/python" - <<'PY' >/dev/null 2>&1 || rc=1
import os, sys
from importlib.metadata import version
from importlib.util import find_spec
assert version("pandaharvester") == "0.7.5"
assert find_spec("pandaharvester.harvesterbody.master") is not None
import pandaharvester.harvestersubmitter.slurm_submitter  # noqa: F401
import pandaharvester.harvestermonitor.slurm_bulk_monitor  # noqa: F401
assert os.path.isfile(os.path.join(sys.prefix, "etc", "panda", "panda_common.cfg.rpmnew"))
PY
    rm -rf "$home"
    return $rc
}

install_harvester() {
    local venv="$1" here source
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    source=${HARVESTER_SOURCE:-$here/../shared/third_party/harvester/harvester-${COMMIT}.tar.gz}
    if [[ ! -f $source ]]; then
        log "no local copy of Harvester ${COMMIT}: using $UPSTREAM"
        source=$UPSTREAM
    fi
    log "installing $source"
    pip_quiet "$venv" --upgrade pip setuptools wheel && pip_quiet "$venv" "$source"
}

ensure_venv "$VENV" "$(real_python "$CI_PYTHON")" venv_ok install_harvester
ci_done
