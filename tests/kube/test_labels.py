"""``ambit.io/`` labels win over their ``istio.io/`` aliases, seen through the real API
server and the Kubernetes source: a namespace labelled ``ambit.io/dataplane-mode=none``
and ``istio.io/dataplane-mode=ambient`` is not enrolled; once ambit's label is removed,
Istio's alone enrolls it."""

from __future__ import annotations

import pytest
import trio

from tests.kube.client import KubeAdmin
from tests.kube.cluster import Cluster
from tests.kube.test_source import net, node, running_pod, settle, watching, workloads

pytestmark = pytest.mark.kube
__all__ = ["net", "node"]  # fixtures, used here


async def test_ambits_none_wins_over_istios_ambient_on_a_namespace(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, node: str, net: str
) -> None:
    with trio.fail_after(60):
        both = {"ambit.io/dataplane-mode": "none", "istio.io/dataplane-mode": "ambient"}
        await kube_admin.patch("v1", "Namespace", kube_ns, {"metadata": {"labels": both}})
        await running_pod(kube_admin, kube_ns, "web", node, net + "1", {"app": "web"})
        async with watching(kube_cluster) as (_source, store):
            await settle(store, lambda: "web" in workloads(store, kube_ns))
            assert workloads(store, kube_ns)["web"].protocol == "TCP"  # not in the mesh

            unlabel = {"metadata": {"labels": {"ambit.io/dataplane-mode": None}}}
            await kube_admin.patch("v1", "Namespace", kube_ns, unlabel)
            await settle(store, lambda: workloads(store, kube_ns)["web"].protocol == "HBONE")
