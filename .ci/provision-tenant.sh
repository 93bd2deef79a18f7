#!/usr/bin/env bash
# Provision what the payload-isolation tests need (tests/unit/test_identity.py, tests/e2e/test_tenant.py):
# bubblewrap (the sandbox), setpriv (util-linux), openssl (user proxies). The test accounts themselves
# are made and removed by the tests. Idempotent; run as root (./dev test does).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ci_init provision-tenant

apt_install_missing bubblewrap util-linux openssl passwd
require_commands bwrap setpriv openssl useradd
ci_done
