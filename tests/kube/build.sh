#!/usr/bin/env bash
# Builds the Kubernetes control plane the tests in tests/kube run against:
# etcd, kube-apiserver and kube-controller-manager, and the kubectl that
# test_kubectl_install.py types docs/install.md's commands with, from the Go
# modules pinned in tests/kube/go.mod, with the machine's Go (1.26 or later), and makes sure the
# Gateway API module (its config/crd/standard/*.yaml) is in the module cache.
#
#   tests/kube/build.sh            (or `make kube`)
#
# The binaries go to $AMBIT_KUBE_BIN (default: .cache/kube/bin in the
# repository, git-ignored). When they are there and were built from the same
# go.mod, go.sum, this script and Go version, nothing is built. Go's own caches
# (GOMODCACHE, GOCACHE) are used as they are: from empty caches the build takes
# minutes (README, "Testing"), from warm ones seconds. Builds run under nice.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${AMBIT_KUBE_BIN:-$repo/.cache/kube/bin}"

if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"; fi
if ! command -v go >/dev/null; then
    echo "build.sh: needs Go 1.26 or later on PATH (k8s.io/kubernetes v1.36 declares go 1.26.0)" >&2
    exit 1
fi
goversion="$(go env GOVERSION)"
minor="$(echo "$goversion" | sed -E 's/^go1\.([0-9]+).*/\1/')"
if ! [ "$minor" -ge 26 ] 2>/dev/null; then
    echo "build.sh: needs Go 1.26 or later, have $goversion" >&2
    exit 1
fi

cd "$here"
# Nothing of this module is stamped with VCS data; its go.sum is complete.
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"
export CGO_ENABLED=0
# What the binaries were built from: if it has not changed, they are current.
stamp="$(cat go.mod go.sum build.sh | sha256sum | cut -d' ' -f1) $goversion"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

current=yes
for b in "${binaries[@]}"; do [ -x "$out/$b" ] || current=no; done
[ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ] || current=no

if [ "$current" = no ]; then
    start=$(date +%s)
    mkdir -p "$out"
    rm -f "$out/.stamp"
    kube="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"   # v1.36.3
    major="$(echo "$kube" | sed -E 's/^v([0-9]+)\..*/\1/')"
    minor_k="$(echo "$kube" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
    # Without these, /version says v0.0.0-master+$Format:%H$ (and `kubectl version`
    # its Client Version).
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags="$ldflags -X $pkg.gitVersion=$kube -X $pkg.gitMajor=$major"
        ldflags="$ldflags -X $pkg.gitMinor=$minor_k -X $pkg.gitTreeState=clean"
    done
    echo "build.sh: building kube-apiserver, kube-controller-manager and kubectl $kube, etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) with $goversion into $out"
    nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$out/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl
    nice -n 19 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
    echo "$stamp" > "$out/.stamp"
    echo "build.sh: built in $(( $(date +%s) - start )) s"
fi

# The tests read the Gateway API's standard CRDs from this module's directory.
gateway="$(go mod download -json sigs.k8s.io/gateway-api | sed -nE 's/^\t"Dir": "(.*)",?$/\1/p')"
if [ ! -d "$gateway/config/crd/standard" ]; then
    echo "build.sh: no config/crd/standard in sigs.k8s.io/gateway-api ($gateway)" >&2
    exit 1
fi
echo "build.sh: ${binaries[*]} in $out; Gateway API CRDs in $gateway/config/crd/standard"
