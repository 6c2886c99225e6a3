"""Tests of the node side (docs/node.md): ambit-cni run as a container runtime runs
it (``cnitool`` over a conflist of the CNI reference plugins, built by
``tests/cni/build.sh``, in a network namespace of the test's own) against the real
API server of ``tests/kube``, with a stand-in for the node agent
(``chain.TestAgent``); and its install into a CNI config directory."""
