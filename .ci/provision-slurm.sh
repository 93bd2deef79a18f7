#!/usr/bin/env bash
# Provision what the launch tests need to run a REAL single-node Slurm on loopback (tests/integration/slurm.py):
# Debian's slurm-wlm (slurmctld, slurmd, sbatch, squeue, scancel, sinfo) and munge. Nothing is configured or
# started here: the tests write their own slurm.conf and munge key in a temporary directory, start the daemons
# on 127.0.0.1 and stop them by PID. The packages' own services are not needed (and not touched).
# Idempotent; run as root on Debian 12.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ci_init provision-slurm

apt_install_missing slurm-wlm munge
require_commands sbatch squeue scancel sinfo munge /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged
ci_done
