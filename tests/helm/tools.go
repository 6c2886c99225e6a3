//go:build tools

// Package tools names the binary build.sh builds, so that go.mod and go.sum pin
// it: Helm's command, from its Go module, for `helm lint` and `helm template`.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
