#!/usr/bin/env bash
# VMware's vCenter simulator (govmomi vcsim) for the vsphere tests, built from Debian's govmomi.
# Rebuilt only when tests/peers/vcsim/main.go changes; the binary is cached outside the work tree.
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
cd "$(dirname "$0")/../.."
apt_install_missing golang-go golang-github-vmware-govmomi-dev
cache="${XDG_CACHE_HOME:-$HOME/.cache}/bigbang/vcsim"
mkdir -p "$cache"
src=tests/peers/vcsim/main.go
sum="$(cat "$src" <(go version) <(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev) | sha256sum | cut -c1-16)"
if [ -x "$cache/vcsim" ] && [ "$(cat "$cache/source.sha" 2>/dev/null)" = "$sum" ]; then
  exit 0
fi
echo "building vcsim into $cache (about 20 s)"
(cd tests/peers/vcsim && GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$cache/gocache" \
  go build -o "$cache/vcsim.new" .)
mv "$cache/vcsim.new" "$cache/vcsim"
echo "$sum" > "$cache/source.sha"
