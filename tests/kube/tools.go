//go:build tools

// Package tools names the binaries build.sh builds, so that go.mod and go.sum pin
// them: etcd, kube-apiserver, kube-controller-manager and kubectl (which
// test_kubectl_install.py runs as a user types it), and the Gateway API module
// whose config/crd/standard/*.yaml the test harness installs.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/gateway-api/apis/v1"
)
