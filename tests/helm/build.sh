#!/usr/bin/env bash
# Builds Helm (helm.sh/helm/v3, pinned in tests/helm/go.mod) with the machine's Go
# (1.26 or later) for the chart tests: `helm lint` and `helm template` of charts/.
#
#   tests/helm/build.sh            (or `make helm`)
#
# The binary goes to $AMBIT_HELM_BIN (default: .cache/helm/bin in the repository,
# git-ignored). When it is there and was built from the same go.mod, go.sum, this
# script and Go version, nothing is built. Builds run under nice.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${AMBIT_HELM_BIN:-$repo/.cache/helm/bin}"

if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"; fi
if ! command -v go >/dev/null; then
    echo "build.sh: needs Go 1.26 or later on PATH" >&2
    exit 1
fi
goversion="$(go env GOVERSION)"

cd "$here"
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"
export CGO_ENABLED=0
stamp="$(cat go.mod go.sum build.sh | sha256sum | cut -d' ' -f1) $goversion"
if [ -x "$out/helm" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "build.sh: helm in $out is current"
    exit 0
fi
start=$(date +%s)
mkdir -p "$out"
rm -f "$out/.stamp"
helm="$(go list -m -f '{{.Version}}' helm.sh/helm/v3)"
# As Helm's Makefile: the Kubernetes version it assumes without a cluster is that of
# its client-go (else v1.20).
client="$(go list -m -f '{{.Version}}' k8s.io/client-go)"   # v0.35.x: Kubernetes 1.35
minor="$(echo "$client" | sed -E 's/^v0\.([0-9]+)\..*/\1/')"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
done
echo "build.sh: building helm $helm with $goversion into $out"
nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$out/helm" helm.sh/helm/v3/cmd/helm
echo "$stamp" > "$out/.stamp"
echo "build.sh: built in $(( $(date +%s) - start )) s"
