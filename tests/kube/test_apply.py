"""Server-Side Apply through the control plane's client (``k8s.sources.api.server_side_apply``),
against the real API server: objects and their ``/status`` subresource."""

from __future__ import annotations

import pytest
import trio

from k8s.sources.api import server_side_apply
from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
from tests.kube.client import KubeAdmin
from tests.kube.cluster import Cluster

pytestmark = pytest.mark.trio


def config_map(ns: str, data: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied", "namespace": ns}, "data": data,
    }  # fmt: skip


async def test_apply_creates_then_updates_and_names_its_field_manager(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    path = f"/api/v1/namespaces/{kube_ns}/configmaps/applied"
    with trio.fail_after(60):
        async with open_kube_api(KubeSourceConfig(kubeconfig=kube_cluster.kubeconfig)) as api:
            status, _ = await server_side_apply(
                api, path, config_map(kube_ns, {"a": "1"}), field_manager="ambit"
            )
            assert status == 201
            status, body = await server_side_apply(
                api, path, config_map(kube_ns, {"b": "2"}), field_manager="ambit"
            )
            assert status == 200
            assert body["data"] == {"b": "2"}  # a field no longer applied is removed
            status, body = await server_side_apply(
                api, path, {"kind": "ConfigMap"}, field_manager="ambit"
            )
            assert status == 400  # a broken document: the server's error, not an exception
    stored = await kube_admin.get("v1", "ConfigMap", "applied", kube_ns)
    assert stored["data"] == {"b": "2"}
    assert {m["manager"] for m in stored["metadata"]["managedFields"]} == {"ambit"}


async def test_apply_to_status_changes_status_only(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": kube_ns},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}},
    }  # fmt: skip
    await kube_admin.create(service)
    condition = {
        "type": "ambit.io/WaypointBound", "status": "False", "reason": "NoWaypoint",
        "message": "m", "lastTransitionTime": "2026-12-06T00:00:00Z",
    }  # fmt: skip
    path = f"/api/v1/namespaces/{kube_ns}/services/web/status"
    with trio.fail_after(60):
        async with open_kube_api(KubeSourceConfig(kubeconfig=kube_cluster.kubeconfig)) as api:
            status, body = await server_side_apply(
                api, path,
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "web", "namespace": kube_ns},
                 "status": {"conditions": [condition]}},
                field_manager="ambit",
            )  # fmt: skip
    assert status == 200, body
    stored = await kube_admin.get("v1", "Service", "web", kube_ns)
    assert stored["status"]["conditions"][0]["type"] == "ambit.io/WaypointBound"
    assert stored["spec"]["selector"] == {"app": "web"}
