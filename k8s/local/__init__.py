"""The one-machine cluster ("local mode"): pods as network namespaces on a bridge.

``ambit up`` (:mod:`k8s.local.lifecycle`) starts a daemon
(:mod:`k8s.local.daemon`) that owns the cluster (:mod:`k8s.local.cluster`):
one network namespace per node and per pod on a per-cluster Linux bridge
(:mod:`k8s.local.network`), each pod's command run inside its namespace
(:mod:`k8s.local.processes`), Service VIPs with kube-proxy-like DNAT and
per-pod hosts files (:mod:`k8s.local.plan`, pure), everything it creates
recorded on disk (:mod:`k8s.local.state`), and a JSON API on a Unix socket
for the CLI (:mod:`k8s.local.api`). Manifests come through
:mod:`k8s.local.objects`; names and addresses through
:mod:`k8s.local.config`. Namespaces are entered through
:class:`mesh.netns.NetworkNamespace`; :mod:`k8s.local.hooks` is where the
control plane, and each node's ztunnel and node agent, plug in (:mod:`k8s.localmesh`,
which also plays the container runtime's part: each pod's CNI ADD and DEL to its node's
agent, :mod:`k8s.localcni`).
"""
