"""``ambit install`` against the real API server: the whole rendering passes a
server-side dry run and a real apply (server-side apply, strict field validation), the
objects exist, the controllers take the Deployment (its ReplicaSet's Pod is admitted,
with its ServiceAccount; no kubelet runs it), and RBAC lets the control plane's
ServiceAccount do each thing it needs, and nothing it does not: asked of the server with
SubjectAccessReviews, and tried with a token of that ServiceAccount."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from k8s import install
from k8s.sources.resources import RESOURCES
from mesh.constants import SYSTEM_NAMESPACE
from tests.kube.client import KubeAdmin, KubeError, Obj, wait_for
from tests.kube.installing import installed

pytestmark = pytest.mark.kube

NAME = install.NAME
USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{NAME}"
GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{SYSTEM_NAMESPACE}",
          "system:authenticated"]  # fmt: skip
POD_SECONDS = 60.0
__all__ = ["installed"]  # the fixture, used here


async def allowed(
    admin: KubeAdmin, verb: str, group: str, resource: str, *,
    namespace: str = "", subresource: str = "", name: str = "",
) -> bool:  # fmt: skip
    """Whether the API server's authorizer lets the control plane's ServiceAccount."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "metadata": {},
        "spec": {
            "user": USER,
            "groups": GROUPS,
            "resourceAttributes": {
                "verb": verb, "group": group, "resource": resource,
                "subresource": subresource, "namespace": namespace, "name": name,
            },
        },
    }  # fmt: skip
    answer = await admin.create(review)
    return bool(answer["status"].get("allowed"))


async def test_the_rendering_applies_and_its_objects_exist(
    kube_admin: KubeAdmin, installed: list[Obj]
) -> None:
    with trio.fail_after(30):
        for doc in installed:
            meta = doc["metadata"]
            got = await kube_admin.get(doc["apiVersion"], doc["kind"], meta["name"],
                                       meta.get("namespace"))  # fmt: skip
            assert got["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ambit"
        service = await kube_admin.get("v1", "Service", NAME, SYSTEM_NAMESPACE)
    assert {p["port"] for p in service["spec"]["ports"]} == {15010, 15012, 15014, 15016}
    assert service["spec"]["clusterIP"]


async def test_the_deployment_makes_an_admitted_pod(
    kube_admin: KubeAdmin, installed: list[Obj]
) -> None:
    async def pod() -> Obj | None:
        pods = await kube_admin.list("v1", "Pod", SYSTEM_NAMESPACE, label_selector=f"app={NAME}")
        return pods[0] if pods else None

    with trio.fail_after(POD_SECONDS + 10):
        made = await wait_for(pod, seconds=POD_SECONDS)
    spec = made["spec"]
    assert spec["serviceAccountName"] == NAME
    # The ServiceAccount admission plugin mounted its token: in-cluster credentials.
    mounts = spec["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounts)
    assert made["metadata"]["labels"]["ambit.io/dataplane-mode"] == "none"


async def test_rbac_allows_what_the_control_plane_needs(
    kube_admin: KubeAdmin, installed: list[Obj]
) -> None:
    needs: list[tuple[str, str, str, str, str]] = []  # verb, group, resource, sub, namespace
    # The CA's keys (ca.secret_keys): read by name, created once.
    ca_secrets = [("get", "", "secrets", name, SYSTEM_NAMESPACE) for name in install.CA_SECRETS]
    for r in RESOURCES:
        needs += [(verb, r.group, r.plural, "", "") for verb in ("list", "watch")]
        if r.crd:
            needs.append(("patch", r.group, r.plural, "status", "shop"))
    needs += [
        ("list", "discovery.k8s.io", "endpointslices", "", ""),  # a selectorless Service's
        ("watch", "discovery.k8s.io", "endpointslices", "", ""),
        ("list", "", "nodes", "", ""),  # a workload's locality
        ("watch", "", "nodes", "", ""),
        ("list", "apiextensions.k8s.io", "customresourcedefinitions", "", ""),
        ("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", ""),
        ("patch", "", "services", "status", "shop"),
        ("create", "authentication.k8s.io", "tokenreviews", "", ""),
        ("create", "", "events", "", "shop"),
        ("create", "events.k8s.io", "events", "", "shop"),
        ("get", "coordination.k8s.io", "leases", "", SYSTEM_NAMESPACE),
        ("create", "coordination.k8s.io", "leases", "", SYSTEM_NAMESPACE),
        ("update", "coordination.k8s.io", "leases", "", SYSTEM_NAMESPACE),
        ("patch", "events.k8s.io", "events", "", "shop"),  # an Event's count (k8s.events)
        ("patch", "gateway.networking.k8s.io", "gatewayclasses", "status", ""),
        ("create", "apps", "deployments", "", "shop"),
        ("patch", "apps", "deployments", "", "shop"),
        ("delete", "", "services", "", "shop"),
        ("create", "", "serviceaccounts", "", "shop"),
        ("create", "gateway.networking.k8s.io", "gatewayclasses", "", ""),
        ("update", "gateway.networking.k8s.io", "gateways", "finalizers", "shop"),
    ]
    needs.append(("create", "", "secrets", "", SYSTEM_NAMESPACE))
    with trio.fail_after(60):
        refused = [need for need in needs
                   if not await allowed(kube_admin, need[0], need[1], need[2],
                                        subresource=need[3], namespace=need[4])]  # fmt: skip
        refused += [need for need in ca_secrets
                    if not await allowed(kube_admin, need[0], need[1], need[2],
                                         name=need[3], namespace=need[4])]  # fmt: skip
    assert refused == []


async def test_rbac_refuses_what_it_does_not_need(
    kube_admin: KubeAdmin, installed: list[Obj]
) -> None:
    not_needed = [
        ("get", "", "secrets", "", SYSTEM_NAMESPACE),  # any Secret: only the CA's, by name
        ("list", "", "secrets", "", ""),
        ("list", "", "secrets", "", SYSTEM_NAMESPACE),
        ("create", "", "secrets", "", "shop"),
        ("create", "coordination.k8s.io", "leases", "", "shop"),  # only in its own namespace
        ("update", "security.ambit.io", "authorizationpolicies", "", "shop"),  # status only
        ("create", "", "pods", "", "shop"),
        ("create", "discovery.k8s.io", "endpointslices", "", "shop"),  # read only
        ("patch", "", "nodes", "", ""),
        ("patch", "", "nodes", "status", ""),
        ("delete", "apiextensions.k8s.io", "customresourcedefinitions", "", ""),
    ]
    with trio.fail_after(60):
        granted = [need for need in not_needed
                   if await allowed(kube_admin, need[0], need[1], need[2],
                                    subresource=need[3], namespace=need[4])]  # fmt: skip
    assert granted == []


async def test_the_service_account_token_lists_what_the_source_watches(
    kube_admin: KubeAdmin, installed: list[Obj], kube_ns: str
) -> None:
    """A real token of the ServiceAccount (as the kubelet would mount it), used as the
    control plane's source uses it: every resource's collection, then a secret."""
    with trio.fail_after(60):
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 600}}  # fmt: skip
        token = (
            await kube_admin.post_subresource(
                "v1", "ServiceAccount", NAME, "token", request, SYSTEM_NAMESPACE
            )
        )["status"]["token"]
        crds = await kube_admin.list("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        names = {c["metadata"]["name"] for c in crds}
        as_controlplane = partial(kube_admin.request, "GET", token=token)
        for r in RESOURCES:
            if r.crd and r.name not in names:
                continue  # a CRD this cluster does not have (Istio's)
            listing = await as_controlplane(f"{r.path(r.versions[0])}?limit=1")
            assert "items" in listing, r.name
        with pytest.raises(KubeError) as refused:
            await as_controlplane(f"/api/v1/namespaces/{kube_ns}/secrets")
    assert refused.value.status == 403
