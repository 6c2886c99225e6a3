//go:build tools

// Package tools names the binaries build.sh builds, so that go.mod and go.sum pin
// them: the CNI reference plugins a container runtime's chain would run before
// ambit-cni, and cnitool, which runs a chain the way a container runtime does.
package tools

import (
	_ "github.com/containernetworking/cni/cnitool"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
)
