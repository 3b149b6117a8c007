#!/usr/bin/env bash
# Debian packages the test peers need; each later script may add its own.
set -euo pipefail
need=()
for pkg in openssh-server postgresql-15; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
