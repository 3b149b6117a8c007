#!/usr/bin/env bash
# Request Tracker 5 (Debian packages) for the defect flow's ticket-system tests (tests/peers/rt.py).
# The tests run their own throwaway instance; the packaged configuration is not used. ~70 s when missing.
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
pkgs=(request-tracker5 rt5-db-sqlite rt5-standalone)
dpkg-query -W -f='${Status}\n' "${pkgs[@]}" 2>/dev/null | grep -c "install ok installed" | grep -qx "${#pkgs[@]}" && exit 0
debconf-set-selections <<'SEL'
request-tracker5 request-tracker5/rtname string bigbang-test
request-tracker5 request-tracker5/organization string bigbang.test
request-tracker5 request-tracker5/correspondaddress string rt@bigbang.test
request-tracker5 request-tracker5/commentaddress string rt-comment@bigbang.test
request-tracker5 request-tracker5/webbaseurl string http://localhost
request-tracker5 request-tracker5/install-cronjobs boolean false
request-tracker5 request-tracker5/dbconfig-install boolean true
request-tracker5 request-tracker5/database-type select sqlite3
request-tracker5 request-tracker5/initial-root-password password bigbang-rt-setup
SEL
apt_install_missing "${pkgs[@]}"
