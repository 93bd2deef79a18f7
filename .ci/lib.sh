# Shared by the .ci/provision-*.sh scripts (sourced, not run). Each script calls `ci_init NAME` first, then:
#   apt_install_missing [--no-install-recommends] PKG...   install the Debian packages not yet installed
#   require_commands PROGRAM...                            fail when a program is still missing
#   real_python PYTHON                                     the interpreter's real path (past a pyenv shim)
#   ensure_venv VENV PYTHON CHECK INSTALL [ARG...]         keep a venv that passes CHECK, else rebuild it
#   pip_quiet VENV PIP-INSTALL-ARGS...                     pip install into VENV with the persistent cache
#   ci_done                                                log the time taken
# Everything is idempotent: what is already there is checked and left alone, so a re-run is fast.
# CACHE_ROOT ($PANDA_CI_CACHE, default /var/cache/pandapilot-ci) holds the venvs and pip's cache;
# CI_PYTHON ($PANDA_CI_PYTHON, default python3.11) is the interpreter the server venvs are built on.

CACHE_ROOT="${PANDA_CI_CACHE:-/var/cache/pandapilot-ci}"
CI_PYTHON="${PANDA_CI_PYTHON:-python3.11}"
APT_OPTIONS=(-o DPkg::Lock::Timeout=600)   # other provisioning (or the machine's own) may hold the dpkg lock

log() { printf '[%s] %s\n' "${CI_NAME:-provision}" "$*"; }
die() { log "$*" >&2; exit 1; }

# ci_init NAME: the name in every log line; provisioning installs system packages, so root only
ci_init() {
    CI_NAME="$1"
    CI_START=$(date +%s)
    [[ "$(id -u)" == "0" ]] || die "must run as root"
}

ci_done() {
    log "done in $(( $(date +%s) - CI_START )) s (cache root $CACHE_ROOT)"
}

# apt_missing PKG...: prints the packages not installed, one a line
apt_missing() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s\n' "$p"
    done
}

apt_install_missing() {
    local flags=()
    if [[ "${1:-}" == --no-install-recommends ]]; then
        flags+=("$1"); shift
    fi
    local missing
    mapfile -t missing < <(apt_missing "$@")
    if (( ${#missing[@]} == 0 )); then
        log "apt packages already installed"; return 0
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTIONS[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTIONS[@]}" install -y -qq "${flags[@]}" "${missing[@]}" >/dev/null
}

require_commands() {
    local program
    for program in "$@"; do
        command -v "$program" >/dev/null || die "$program missing after install"
    done
}

real_python() {
    command -v "$1" >/dev/null || die "$1 not found on PATH"
    "$(command -v "$1")" -c 'import sys; print(sys.executable)'
}

# pip, quiet, without the warnings about index locations configured on some machines but absent
pip_quiet() {
    local venv="$1"; shift
    local out rc=0
    mkdir -p "$CACHE_ROOT/pip-cache"
    out="$("$venv/bin/python" -m pip install -q --disable-pip-version-check --cache-dir "$CACHE_ROOT/pip-cache" \
           "$@" 2>&1)" || rc=$?
    if [[ -n "$out" ]]; then
        grep -v -e "is ignored: it is neither a file nor a directory" <<<"$out" || true
    fi
    return "$rc"
}

# ensure_venv VENV PYTHON CHECK INSTALL [ARG...]: `CHECK VENV ARG...` says whether the venv is fine (quietly);
# when it is not, the venv is made anew on PYTHON, `INSTALL VENV ARG...` fills it and CHECK must then pass.
ensure_venv() {
    local venv="$1" python="$2" check="$3" install="$4"; shift 4
    if "$check" "$venv" "$@"; then
        log "venv $venv ok"; return 0
    fi
    log "building venv $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$install" "$venv" "$@" || die "venv $venv: install failed"
    "$check" "$venv" "$@" || die "venv $venv failed its import check"
    log "venv $venv ready"
}
