#!/usr/bin/env bash
# Provision what the payload-isolation tests need (tests/unit/test_identity.py, tests/e2e/test_tenant.py):
# bubblewrap (the sandbox), setpriv (util-linux), openssl (user proxies). The test accounts themselves
# are made and removed by the tests. Idempotent; run as root (./dev test does).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "provision-tenant: must run as root" >&2; exit 1; }
missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v openssl >/dev/null || missing+=(openssl)
command -v useradd >/dev/null || missing+=(passwd)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
fi
