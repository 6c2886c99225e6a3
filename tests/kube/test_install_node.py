"""``ambit install --node`` against the real API server, after ``ambit install``: the
rendering passes a server-side dry run and a real apply (strict field validation); the
DaemonSet controller makes one pod of each DaemonSet for a Linux node, admitted with the
privileges the DaemonSets ask for (no kubelet runs them); and RBAC lets the node agent's
ServiceAccount read pods and namespaces and patch the status of pods of ambit's
namespace only, and ztunnel's do nothing at all (asked with SubjectAccessReviews); with a
token of the agent's ServiceAccount bound to its pod, its status annotation is written
through its pod's ``/status``, and nothing else: no spec, no other pod (the
ValidatingAdmissionPolicy), no label or status."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial

import pytest
import trio

from k8s import install, install_node
from k8s.install_node import AGENT, ZTUNNEL
from mesh.constants import SYSTEM_NAMESPACE
from tests.kube.client import KubeAdmin, KubeError, NotFound, Obj, wait_for
from tests.kube.installing import installed, node_installed
from tests.kube.kubelet import create_node
from tests.unit.test_install_node import AGENT_PRIVILEGES, ZTUNNEL_PRIVILEGES, privileges

pytestmark = pytest.mark.kube
__all__ = ["installed", "node_installed"]  # the fixtures, used here
SECONDS = 60.0
GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{SYSTEM_NAMESPACE}",
          "system:authenticated"]  # fmt: skip


async def daemon_pod(admin: KubeAdmin, app: str, node: str) -> Obj | None:
    """The pod the DaemonSet controller made for ``node`` (its node affinity names it)."""
    for pod in await admin.list("v1", "Pod", SYSTEM_NAMESPACE, label_selector=f"app={app}"):
        affinity = pod["spec"].get("affinity", {}).get("nodeAffinity", {})
        required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
        for term in required.get("nodeSelectorTerms", []):
            if any(node in f.get("values", []) for f in term.get("matchFields", [])):
                return pod
    return None


@pytest.fixture
async def linux_node(kube_admin: KubeAdmin) -> AsyncIterator[str]:
    """A Node labelled ``kubernetes.io/os: linux``, as kubelets label theirs."""
    name = f"node-{secrets.token_hex(3)}"
    with trio.fail_after(SECONDS):
        await create_node(kube_admin, name)
        labels = {"metadata": {"labels": {"kubernetes.io/os": "linux"}}}
        await kube_admin.patch("v1", "Node", name, labels)
    yield name
    with trio.fail_after(10), suppress(NotFound):
        await kube_admin.delete("v1", "Node", name)


async def test_the_rendering_applies_and_each_daemonset_makes_a_pod_per_node(
    kube_admin: KubeAdmin, node_installed: list[Obj], linux_node: str
) -> None:
    with trio.fail_after(SECONDS + 10):
        for doc in node_installed:
            meta = doc["metadata"]
            got = await kube_admin.get(doc["apiVersion"], doc["kind"], meta["name"],
                                       meta.get("namespace"))  # fmt: skip
            assert got["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ambit"
        pods = {
            app: await wait_for(partial(daemon_pod, kube_admin, app, linux_node),
                                seconds=SECONDS, interval=0.2)
            for app in (ZTUNNEL, AGENT)
        }  # fmt: skip
    # Admitted as asked: nothing added or taken away on the way.
    assert privileges({"spec": {"template": pods[ZTUNNEL]}}) == ZTUNNEL_PRIVILEGES
    assert privileges({"spec": {"template": pods[AGENT]}}) == AGENT_PRIVILEGES
    for pod in pods.values():
        assert pod["spec"]["priorityClassName"] == "system-node-critical"
        assert pod["spec"]["priority"] == 2000001000
    ztunnel = pods[ZTUNNEL]["spec"]
    assert ztunnel["serviceAccountName"] == ZTUNNEL
    mounts = ztunnel["containers"][0]["volumeMounts"]
    assert not any(m["mountPath"].startswith("/var/run/secrets/kubernetes.io") for m in mounts)
    agent = pods[AGENT]["spec"]
    assert agent["serviceAccountName"] == AGENT
    mounts = agent["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounts)


async def allowed(
    admin: KubeAdmin, account: str, verb: str, resource: str, namespace: str = ""
) -> bool:
    """Whether ``account`` of ambit's namespace may; ``resource`` may be ``pods/status``."""
    resource, _, subresource = resource.partition("/")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "metadata": {},
        "spec": {
            "user": f"system:serviceaccount:{SYSTEM_NAMESPACE}:{account}",
            "groups": GROUPS,
            "resourceAttributes": {"verb": verb, "group": "", "resource": resource,
                                   "subresource": subresource, "namespace": namespace},
        },
    }  # fmt: skip
    answer = await admin.create(review)
    return bool(answer["status"].get("allowed"))


async def test_rbac_grants_the_agent_what_it_needs_and_nothing_more(
    kube_admin: KubeAdmin, node_installed: list[Obj]
) -> None:
    needs = [
        (AGENT, verb, resource, "") for verb in install.READ
        for resource in ("pods", "namespaces")
    ] + [(AGENT, "patch", "pods/status", SYSTEM_NAMESPACE)]  # fmt: skip
    not_needed = [
        (AGENT, "patch", "pods", SYSTEM_NAMESPACE),  # a spec: the control plane's image
        (AGENT, "patch", "pods/status", "shop"),
        (AGENT, "patch", "pods", "shop"),
        (AGENT, "update", "pods", SYSTEM_NAMESPACE),
        (AGENT, "delete", "pods", SYSTEM_NAMESPACE),
        (AGENT, "create", "pods", SYSTEM_NAMESPACE),
        (AGENT, "get", "secrets", SYSTEM_NAMESPACE),
        (AGENT, "patch", "nodes", ""),
        (AGENT, "patch", "namespaces", ""),
        (ZTUNNEL, "list", "pods", ""),
        (ZTUNNEL, "get", "pods", SYSTEM_NAMESPACE),
        (ZTUNNEL, "get", "secrets", SYSTEM_NAMESPACE),
        (ZTUNNEL, "get", "configmaps", SYSTEM_NAMESPACE),
    ]
    with trio.fail_after(SECONDS):
        refused = [need for need in needs if not await allowed(kube_admin, *need)]
        granted = [need for need in not_needed if await allowed(kube_admin, *need)]
    assert refused == []
    assert granted == []


async def bound_token(admin: KubeAdmin, pod: Obj) -> str:
    """A token of the agent's ServiceAccount bound to ``pod``, as the kubelet mounts it."""
    meta = pod["metadata"]
    request = {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600, "boundObjectRef": {
            "kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}},
    }  # fmt: skip
    answer = await admin.post_subresource(
        "v1", "ServiceAccount", AGENT, "token", request, SYSTEM_NAMESPACE
    )
    return str(answer["status"]["token"])


async def test_the_agent_writes_its_own_pods_annotation_through_status_only(
    kube_admin: KubeAdmin, node_installed: list[Obj], linux_node: str
) -> None:
    """Through ``/status`` (a spec there is ignored; the pod itself is refused by RBAC), to
    its own pod only and its annotations only (the ValidatingAdmissionPolicy)."""
    with trio.fail_after(SECONDS + 10):
        agent, ztunnel = [
            await wait_for(partial(daemon_pod, kube_admin, app, linux_node),
                           seconds=SECONDS, interval=0.2)
            for app in (AGENT, ZTUNNEL)
        ]  # fmt: skip
        as_agent = partial(kube_admin.request, token=await bound_token(kube_admin, agent),
                           content_type="application/merge-patch+json")  # fmt: skip
        pods = f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods"
        path = f"{pods}/{agent['metadata']['name']}"
        other = f"{pods}/{ztunnel['metadata']['name']}/status"

        async def enforced() -> bool:
            """The API server enforces a new policy once its informers have it."""
            try:
                await as_agent("PATCH", other, {"metadata": {"annotations": {"a": "b"}}})
            except KubeError:
                return True
            return False

        await wait_for(enforced, seconds=30, interval=0.5)
        report = '{"cni": {"installed": true}}'
        await as_agent("PATCH", f"{path}/status", {
            "metadata": {"annotations": {install_node.STATUS_ANNOTATION: report}},
            "spec": {"containers": [{"name": "node-agent", "image": "evil.example/x:1"}]},
        })  # fmt: skip
        refusals = []
        for where, patch in (
            (path, {"metadata": {"annotations": {"a": "b"}}}),  # the pod: RBAC
            (
                f"{pods}/{ztunnel['metadata']['name']}/status",  # another pod: the policy
                {"metadata": {"annotations": {"a": "b"}}},
            ),
            (f"{path}/status", {"metadata": {"labels": {"app": "other"}}}),  # its labels
            (f"{path}/status", {"status": {"phase": "Failed"}}),  # its status
        ):
            try:
                await as_agent("PATCH", where, patch)
                refusals.append(200)
            except KubeError as error:
                refusals.append(error.status)
        got = await kube_admin.get("v1", "Pod", agent["metadata"]["name"], SYSTEM_NAMESPACE)
    assert got["metadata"]["annotations"][install_node.STATUS_ANNOTATION] == report
    assert got["spec"]["containers"][0]["image"] == agent["spec"]["containers"][0]["image"]
    assert got["metadata"]["labels"]["app"] == AGENT
    assert refusals[0] == 403, refusals
    assert all(status in (403, 422) for status in refusals[1:]), refusals
