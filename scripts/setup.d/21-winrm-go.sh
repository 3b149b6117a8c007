#!/usr/bin/env bash
# A second WinRM client, independent of pyspnego and Python (Go's masterzen/winrm with Azure/go-ntlmssp), for
# tests/test_wsman_server.py. Rebuilt only when tests/peers/winrm_go/main.go changes; cached outside the tree.
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
cd "$(dirname "$0")/../.."
apt_install_missing golang-go golang-github-masterzen-winrm-dev
cache="${XDG_CACHE_HOME:-$HOME/.cache}/bigbang/winrm-go"
mkdir -p "$cache"
src=tests/peers/winrm_go/main.go
sum="$(cat "$src" <(go version) <(dpkg-query -W -f='${Version}' golang-github-masterzen-winrm-dev) | sha256sum | cut -c1-16)"
if [ -x "$cache/winrm-go" ] && [ "$(cat "$cache/source.sha" 2>/dev/null)" = "$sum" ]; then
  exit 0
fi
echo "building the Go WinRM client into $cache"
(cd tests/peers/winrm_go && GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$cache/gocache" \
  go build -o "$cache/winrm-go.new" .)
mv "$cache/winrm-go.new" "$cache/winrm-go"
echo "$sum" > "$cache/source.sha"
