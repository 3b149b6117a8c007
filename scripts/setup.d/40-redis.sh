#!/usr/bin/env bash
# Redis: the Prefect server's event broker in the distributed tests (prefect-redis).
set -euo pipefail
if ! dpkg-query -W -f='${Status}' redis-server 2>/dev/null | grep -q "install ok installed"; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
# The package starts a system-wide instance; the tests run their own on free ports and need none.
