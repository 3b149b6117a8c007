#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, peer builds, Python packages), then runs them.
# Every step is idempotent: a second run on the same machine skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
for step in scripts/setup.d/*.sh; do
  echo "== setup: ${step##*/}"
  bash "$step"
done
echo "== setup: python packages"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m pip check
echo "== lint and types"
python3 -m ruff check bigbang flows tasks
python3 -m mypy
echo "== tests"
python3 -m pytest "$@"
