#!/usr/bin/env bash
# Provision what the launch tests need to run a REAL single-node Slurm on loopback (tests/integration/slurm.py):
# Debian's slurm-wlm (slurmctld, slurmd, sbatch, squeue, scancel, sinfo) and munge. Nothing is configured or
# started here: the tests write their own slurm.conf and munge key in a temporary directory, start the daemons
# on 127.0.0.1 and stop them by PID. The packages' own services are not needed (and not touched).
# Idempotent; run as root on Debian 12.
set -euo pipefail

APT_PACKAGES=(slurm-wlm munge)
log() { printf '[provision-slurm] %s\n' "$*"; }

if [[ "$(id -u)" != "0" ]]; then
    log "must run as root"; exit 1
fi
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
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
else
    log "apt packages already installed"
fi
for program in sbatch squeue scancel sinfo munge /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged; do
    command -v "$program" >/dev/null || { log "$program missing after install"; exit 1; }
done
log "done"
