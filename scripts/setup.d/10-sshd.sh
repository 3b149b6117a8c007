#!/usr/bin/env bash
# The unprivileged account the test thin-client sshd hosts run as (tests/peers/sshd.py).
# Not root: root's shell start-up costs ~300 ms per command here. Idempotent.
set -euo pipefail
user=bbpeer
if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh "$user"
fi
# useradd leaves the account locked; with UsePAM no a locked account cannot log in with a key.
usermod -p '*' "$user"
# A non-root sshd chowns each pty to the tty group (ssh -tt, which Ansible uses): the user must be in it.
usermod -a -G tty "$user"
