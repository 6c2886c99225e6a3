"""Tests against a real Kubernetes control plane on loopback: etcd, kube-apiserver
and kube-controller-manager built from their Go modules (``make kube``, which runs
``tests/kube/build.sh``), started once per test session by ``cluster.py``. The
harness plays scheduler and kubelet (``kubelet.py``); ``client.py`` is a small
admin client on the standard library; ``gateway_api.py`` installs the Gateway
API's standard CRDs from the pinned ``sigs.k8s.io/gateway-api`` module."""
