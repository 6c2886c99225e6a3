"""Tests against a real Kubernetes control plane on loopback: etcd, kube-apiserver
and kube-controller-manager built from their Go modules (``make kube``, which runs
``tests/kube/build.sh`` and builds kubectl too), started once per test session by
``cluster.py``; ``shell.py`` is a user's shell with that kubectl and ``ambit``. The
harness plays scheduler and kubelet (``kubelet.py``); ``client.py`` is a small
admin client on the standard library; ``gateway_api.py`` installs the Gateway
API's standard CRDs from the pinned ``sigs.k8s.io/gateway-api`` module."""
