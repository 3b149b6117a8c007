#!/usr/bin/env bash
# Redis: the Prefect server's event broker in the distributed tests (prefect-redis).
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
apt_install_missing redis-server
# The package starts a system-wide instance; the tests run their own on free ports and need none.
