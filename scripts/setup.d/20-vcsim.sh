#!/usr/bin/env bash
# VMware's vCenter simulator (govmomi vcsim) for the vsphere tests, built from Debian's govmomi.
# Rebuilt only when tests/peers/vcsim/main.go changes; the binary is cached outside the work tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
for pkg in golang-go golang-github-vmware-govmomi-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
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
