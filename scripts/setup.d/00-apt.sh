#!/usr/bin/env bash
# Debian packages the test peers need; each later script may add its own.
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
apt_install_missing openssh-server postgresql-15 iptables
