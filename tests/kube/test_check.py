"""``ambit check`` against the real API server, after ``ambit install --crds`` and ``ambit
install`` are applied: it fails while the control plane's pod is not Ready (no kubelet
runs it here); once the harness has made that pod Ready and its CA's Secret exists, the
real command passes with only the node side's warning; a CA near expiry is a warning
and an expired one a failure, each with the hint; a ServiceAccount that lost its
binding fails the RBAC check, naming what it may no longer do."""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress

import pytest
import trio

from ca.authority import CaConfig
from ca.secret_keys import SECRET_NAME, CaSecrets, new_ca_secret
from k8s import install
from k8s.check import certs
from k8s.check.base import CheckConfig, Context, Result
from k8s.check.run import run_checks
from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
from mesh.constants import SYSTEM_NAMESPACE
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import Cluster
from tests.kube.installing import installed
from tests.kube.kubelet import bind_pod, create_node, set_pod_running
from tests.kube.test_check_pre import ambit

pytestmark = pytest.mark.kube
__all__ = ["installed"]  # the fixture, used here

SECONDS = 90.0
NODE_SIDE = "the node side is installed (ztunnel and node agent DaemonSets)"
CERTS = "the CA's certificates are valid and not near expiry"
RBAC = "control plane ServiceAccount has the permissions it needs"
VERSION = "control plane is this ambit's version"


async def check(cluster: Cluster) -> dict[str, Result]:
    with trio.fail_after(SECONDS):
        results = await run_checks(CheckConfig(kubeconfig=cluster.kubeconfig))
    return {r.name: r for r in results}


async def _pod(admin: KubeAdmin) -> Obj | None:
    pods = await admin.list("v1", "Pod", SYSTEM_NAMESPACE, label_selector=f"app={install.NAME}")
    return pods[0] if pods else None


async def _available(admin: KubeAdmin) -> bool:
    deployment = await admin.get("apps/v1", "Deployment", install.NAME, SYSTEM_NAMESPACE)
    return bool(deployment.get("status", {}).get("availableReplicas"))


async def _endpoint_ready(admin: KubeAdmin) -> bool:
    selector = f"kubernetes.io/service-name={install.NAME}"
    slices = await admin.list(
        "discovery.k8s.io/v1", "EndpointSlice", SYSTEM_NAMESPACE, label_selector=selector
    )
    return any(
        e.get("conditions", {}).get("ready") for s in slices for e in s.get("endpoints") or []
    )


@pytest.fixture
async def running(kube_admin: KubeAdmin, installed: list[Obj]) -> AsyncIterator[str]:
    """The control plane's pod bound to a node and Ready, as a kubelet would report it,
    its Deployment available and its Service's endpoint ready; the node's name."""
    node = f"node-{secrets.token_hex(3)}"
    with trio.fail_after(SECONDS):
        await create_node(kube_admin, node)
        pod = await wait_for(lambda: _pod(kube_admin), seconds=60)
        name = pod["metadata"]["name"]
        if not pod["spec"].get("nodeName"):
            await bind_pod(kube_admin, SYSTEM_NAMESPACE, name, node)
        await set_pod_running(kube_admin, SYSTEM_NAMESPACE, name, "10.244.77.7")
        await wait_for(lambda: _available(kube_admin), seconds=60, interval=0.2)
        await wait_for(lambda: _endpoint_ready(kube_admin), seconds=60, interval=0.2)
    yield node
    with trio.fail_after(10), suppress(NotFound):
        await kube_admin.delete("v1", "Node", node)


async def put_ca_secret(admin: KubeAdmin, config: CaConfig) -> None:
    """``ambit-ca`` as the control plane makes it, with ``config``'s lifetimes."""
    _, body = new_ca_secret(CaSecrets(), config)
    with suppress(NotFound):
        await admin.delete("v1", "Secret", SECRET_NAME, SYSTEM_NAMESPACE)
    await admin.create(body)


async def test_check_fails_while_the_control_plane_is_not_ready(
    kube_cluster: Cluster, installed: list[Obj]
) -> None:
    results = await check(kube_cluster)
    statuses = {name: r.status for name, r in results.items()}
    assert statuses["ambit's CRDs are installed and established"] == "ok"
    assert statuses[RBAC] == "ok"
    assert statuses["control plane Deployment is available"] == "fail"
    assert statuses["control plane pods are Ready"] == "fail"
    assert results["control plane pods are Ready"].message.startswith(
        "not Ready: ambit-controlplane-"
    )
    assert "kubectl -n ambit-system logs deployment/ambit-controlplane" in (
        results["control plane pods are Ready"].hint
    )
    assert statuses[CERTS] == "warn"  # the control plane never ran: no ambit-ca yet
    assert statuses[NODE_SIDE] == "warn"
    assert statuses[VERSION] == "ok"


async def test_a_control_plane_of_another_version_is_a_warning(
    kube_cluster: Cluster, kube_admin: KubeAdmin, installed: list[Obj]
) -> None:
    older = {"metadata": {"labels": {"app.kubernetes.io/version": "0.0.9"}}}
    with trio.fail_after(30):
        await kube_admin.patch("apps/v1", "Deployment", install.NAME, older, SYSTEM_NAMESPACE)
    try:
        version = (await check(kube_cluster))[VERSION]
    finally:
        with trio.fail_after(30):
            current = {"metadata": {"labels": {"app.kubernetes.io/version": install.VERSION}}}
            await kube_admin.patch("apps/v1", "Deployment", install.NAME, current, SYSTEM_NAMESPACE)
    assert version.status == "warn"
    assert version.message == f"the control plane is 0.0.9; this ambit is {install.VERSION}"


async def test_check_passes_but_for_the_node_side_once_the_control_plane_is_ready(
    kube_cluster: Cluster, kube_admin: KubeAdmin, running: str, gateway_crds: list[str]
) -> None:
    with trio.fail_after(30):
        await put_ca_secret(kube_admin, CaConfig())
    done = await trio.to_thread.run_sync(
        lambda: ambit("check", "--kubeconfig", str(kube_cluster.kubeconfig), timeout=SECONDS)
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    marks = [line for line in lines if line[:2] in ("\u221a ", "\u203c ", "\u00d7 ")]
    assert [m for m in marks if not m.startswith("\u221a ")] == [f"\u203c {NODE_SIDE}"]
    assert len(marks) == 16
    at = lines.index(f"\u203c {NODE_SIDE}")
    assert lines[at + 1] == "    no node side is installed: pods are not captured"
    assert lines[at + 2].startswith("    hint: install it: ambit install --node | kubectl apply")
    assert lines[-1] == "Status check results are \u221a (16 checks: 0 failed, 1 warnings)"

    done = await trio.to_thread.run_sync(
        lambda: ambit("check", "--kubeconfig", str(kube_cluster.kubeconfig), "-o", "json")
    )
    answer = json.loads(done.stdout)
    assert done.returncode == 0
    assert answer["success"] is True
    node = next(c for c in answer["categories"] if c["categoryName"] == "ambit-node")
    assert node["checks"] == [{
        "description": NODE_SIDE, "result": "warning",
        "message": "no node side is installed: pods are not captured",
        "hint": node["checks"][0]["hint"],
    }]  # fmt: skip


async def test_a_ca_near_or_past_expiry_is_reported_with_a_hint(
    kube_cluster: Cluster, kube_admin: KubeAdmin, installed: list[Obj]
) -> None:
    with trio.fail_after(30):
        await put_ca_secret(
            kube_admin, CaConfig(root_lifetime_days=20, intermediate_lifetime_days=10)
        )
    near = (await check(kube_cluster))[CERTS]
    assert near.status == "warn"
    assert "ca-cert.pem" in near.message
    assert "in 9 days" in near.message
    assert "root-cert.pem" in near.message
    assert "in 19 days" in near.message
    assert near.hint.startswith(
        "rotating ambit-ca in place is not built yet: delete Secret ambit-system/ambit-ca"
    )

    # The same Secret, eleven days on: the intermediate has expired.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=11)
    with trio.fail_after(SECONDS):
        async with open_kube_api(KubeSourceConfig(kubeconfig=kube_cluster.kubeconfig)) as api:
            expired = await certs.ca_secret(Context(api, now=later))
    assert expired.status == "fail"
    assert "ca-cert.pem" in expired.message
    assert "expired on" in expired.message
    assert "root-cert.pem" in expired.message
    assert "in 8 days" in expired.message
    assert expired.hint == near.hint


async def test_a_service_account_without_its_binding_fails_the_rbac_check(
    kube_cluster: Cluster, kube_admin: KubeAdmin, installed: list[Obj]
) -> None:
    binding = next(d for d in installed if d["kind"] == "RoleBinding")
    with trio.fail_after(30):
        await kube_admin.delete(
            binding["apiVersion"], "RoleBinding", install.NAME, SYSTEM_NAMESPACE
        )
    try:
        rbac = (await check(kube_cluster))[RBAC]
    finally:
        with trio.fail_after(30):
            await kube_admin.apply(binding)
    assert rbac.status == "fail"
    # What only the Role grants, in its namespace; the ClusterRole still grants the rest.
    assert rbac.message == (
        "ServiceAccount ambit-system/ambit-controlplane may not get secrets cacerts in"
        " ambit-system; create secrets in ambit-system; get, list, watch, create, update,"
        " patch leases.coordination.k8s.io in ambit-system"
    )
    assert "apply 'ambit install' again" in rbac.hint
