#!/usr/bin/env bash
# Builds the CNI reference plugins tests/node chains ambit-cni after (bridge,
# host-local, loopback) and cnitool, which runs a conflist the way a container
# runtime does, from the Go modules pinned in tests/cni/go.mod
# (github.com/containernetworking/plugins, github.com/containernetworking/cni),
# with the machine's Go (1.26.8 or later: plugins v1.10.0 declares it).
#
#   tests/cni/build.sh            (or `make cni`)
#
# The binaries go to $AMBIT_CNI_BIN (default: .cache/cni/bin in the repository,
# git-ignored). When they are there and were built from the same go.mod, go.sum,
# this script and Go version, nothing is built. Seconds from warm Go caches.
# Builds run under nice.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${AMBIT_CNI_BIN:-$repo/.cache/cni/bin}"

if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"; fi
if ! command -v go >/dev/null; then
    echo "build.sh: needs Go 1.26.8 or later on PATH" >&2
    exit 1
fi
goversion="$(go env GOVERSION)"

cd "$here"
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"
export CGO_ENABLED=0
stamp="$(cat go.mod go.sum build.sh | sha256sum | cut -d' ' -f1) $goversion"
binaries=(bridge host-local loopback cnitool)

current=yes
for b in "${binaries[@]}"; do [ -x "$out/$b" ] || current=no; done
[ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ] || current=no
if [ "$current" = yes ]; then
    echo "build.sh: ${binaries[*]} in $out are current"
    exit 0
fi

start=$(date +%s)
mkdir -p "$out"
rm -f "$out/.stamp"
plugins="$(go list -m -f '{{.Version}}' github.com/containernetworking/plugins)"
cni="$(go list -m -f '{{.Version}}' github.com/containernetworking/cni)"
echo "build.sh: building CNI plugins $plugins and cnitool $cni with $goversion into $out"
# The plugins answer VERSION with this (their Makefile's build_linux.sh stamps it too).
ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$plugins"
nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$out/" \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/main/loopback
nice -n 19 go build -trimpath -ldflags "-s -w" -o "$out/cnitool" \
    github.com/containernetworking/cni/cnitool
echo "$stamp" > "$out/.stamp"
echo "build.sh: built in $(( $(date +%s) - start )) s"
