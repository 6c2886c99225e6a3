"""The test cluster does what a user of a real cluster would see: the pinned
release answers, controllers run (ServiceAccounts, the root CA ConfigMap,
EndpointSlices, garbage collection, namespace finalization), pod-bound
ServiceAccount tokens are checked per audience, and the Gateway API's standard
CRDs are installed and validate what is created. The harness is the only
scheduler and kubelet (``tests/kube/kubelet.py``)."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from tests.kube.client import KubeAdmin, KubeError, NotFound, Obj, gone, wait_for
from tests.kube.cluster import Cluster
from tests.kube.kubelet import (
    bind_pod,
    create_node,
    pod,
    remove_pod,
    service,
    set_pod_running,
)

pytestmark = pytest.mark.kube

SLICE_SECONDS = 30.0  # usually under a second after the status patch
FINALIZE_SECONDS = 60.0  # usually about 5 s
GATEWAY_API = "gateway.networking.k8s.io/v1"


@pytest.fixture
async def node(kube_admin: KubeAdmin, kube_ns: str) -> AsyncIterator[str]:
    """A Node of this test's own (Nodes are cluster-scoped), deleted after it."""
    name = f"node-{kube_ns}"
    with trio.fail_after(10):
        await create_node(kube_admin, name)
    yield name
    with trio.fail_after(10):
        await kube_admin.delete("v1", "Node", name)


async def test_the_server_is_the_pinned_release(kube_admin: KubeAdmin) -> None:
    with trio.fail_after(10):
        version = await kube_admin.request("GET", "/version")
    assert (version["gitVersion"], version["major"], version["minor"]) == ("v1.36.3", "1", "36")


async def test_a_new_namespace_gets_its_service_account_and_root_ca(
    kube_admin: KubeAdmin, kube_cluster: Cluster, kube_ns: str
) -> None:
    with trio.fail_after(30):
        account = await kube_admin.get("v1", "ServiceAccount", "default", kube_ns)

        async def root_ca() -> Obj | None:
            try:
                return await kube_admin.get("v1", "ConfigMap", "kube-root-ca.crt", kube_ns)
            except NotFound:
                return None

        config_map = await wait_for(root_ca, seconds=30)
    assert account["metadata"]["namespace"] == kube_ns
    assert config_map["data"]["ca.crt"] == kube_cluster.ca_file.read_text()


def _endpoints(slices: list[Obj]) -> dict[str, Obj]:
    return {
        address: endpoint
        for s in slices
        for endpoint in s.get("endpoints") or []
        for address in endpoint["addresses"]
    }


async def test_a_ready_pod_on_a_node_is_an_endpoint_of_its_service(
    kube_admin: KubeAdmin, kube_ns: str, node: str
) -> None:
    with trio.fail_after(SLICE_SECONDS + 20):
        await kube_admin.create(service(kube_ns, "web", {"app": "web"}))
        await kube_admin.create(pod(kube_ns, "web-1", labels={"app": "web"}, node=node))
        # The second one is scheduled as kube-scheduler does it: a Binding.
        await kube_admin.create(pod(kube_ns, "web-2", labels={"app": "web"}))
        await bind_pod(kube_admin, kube_ns, "web-2", node)
        await set_pod_running(kube_admin, kube_ns, "web-1", "10.244.1.5")
        await set_pod_running(kube_admin, kube_ns, "web-2", "10.244.1.6", ready=False)

        async def endpoints(want: dict[str, bool]) -> dict[str, Obj] | None:
            slices = await kube_admin.list(
                "discovery.k8s.io/v1",
                "EndpointSlice",
                kube_ns,
                label_selector="kubernetes.io/service-name=web",
            )
            found = _endpoints(slices)
            have = {a: e.get("conditions", {}).get("ready") for a, e in found.items()}
            return found if have == want else None

        found = await wait_for(
            partial(endpoints, {"10.244.1.5": True, "10.244.1.6": False}), seconds=SLICE_SECONDS
        )
        assert found["10.244.1.5"]["nodeName"] == node
        assert found["10.244.1.5"]["targetRef"]["name"] == "web-1"
        assert found["10.244.1.6"]["nodeName"] == node

        await set_pod_running(kube_admin, kube_ns, "web-2", "10.244.1.6")
        await wait_for(
            partial(endpoints, {"10.244.1.5": True, "10.244.1.6": True}), seconds=SLICE_SECONDS
        )
        # Deleted, the pod is Terminating until its kubelet says its containers stopped.
        await kube_admin.delete("v1", "Pod", "web-1", kube_ns)
        found = await wait_for(
            partial(endpoints, {"10.244.1.5": False, "10.244.1.6": True}), seconds=SLICE_SECONDS
        )
        assert found["10.244.1.5"]["conditions"]["terminating"] is True
        await remove_pod(kube_admin, kube_ns, "web-1")
        await wait_for(partial(endpoints, {"10.244.1.6": True}), seconds=SLICE_SECONDS)


async def _review(kube_admin: KubeAdmin, token: str, audiences: list[str] | None) -> Obj:
    spec: Obj = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    review = await kube_admin.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
    status: Obj = review["status"]
    return status


async def test_a_pod_bound_token_is_accepted_for_its_audience_only(
    kube_admin: KubeAdmin, kube_ns: str, node: str
) -> None:
    with trio.fail_after(30):
        created = await kube_admin.create(pod(kube_ns, "client", node=node))
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": ["ambit-ca"],
                "expirationSeconds": 600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": "client",
                    "uid": created["metadata"]["uid"],
                },
            },
        }
        answer = await kube_admin.post_subresource(
            "v1", "ServiceAccount", "default", "token", request, kube_ns
        )
        token = answer["status"]["token"]

        accepted = await _review(kube_admin, token, ["ambit-ca"])
        without_audience = await _review(kube_admin, token, None)
        other_audience = await _review(kube_admin, token, ["someone-else"])

    assert accepted["authenticated"] is True
    assert accepted["audiences"] == ["ambit-ca"]
    user = accepted["user"]
    assert user["username"] == f"system:serviceaccount:{kube_ns}:default"
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["client"]
    assert user["extra"]["authentication.kubernetes.io/pod-uid"] == [created["metadata"]["uid"]]
    assert user["extra"]["authentication.kubernetes.io/node-name"] == [node]
    for refused in (without_audience, other_audience):
        assert not refused.get("authenticated")
        assert refused.get("error")


async def test_the_controller_manager_signs_service_account_token_secrets(
    kube_admin: KubeAdmin, kube_ns: str
) -> None:
    """Its token controller fills a ``service-account-token`` Secret with a token
    signed by the key the API server checks."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": "default-token",
            "namespace": kube_ns,
            "annotations": {"kubernetes.io/service-account.name": "default"},
        },
    }
    with trio.fail_after(40):
        await kube_admin.create(secret)

        async def filled() -> str | None:
            data = (await kube_admin.get("v1", "Secret", "default-token", kube_ns)).get("data", {})
            return str(data["token"]) if "token" in data else None

        token = base64.b64decode(await wait_for(filled, seconds=30)).decode()
        review = await _review(kube_admin, token, None)
    assert review["authenticated"] is True
    assert review["user"]["username"] == f"system:serviceaccount:{kube_ns}:default"


async def test_garbage_collection_deletes_an_owners_dependents(
    kube_admin: KubeAdmin, kube_ns: str
) -> None:
    with trio.fail_after(40):
        owner = await kube_admin.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "owner", "namespace": kube_ns},
            }
        )
        reference = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "owner",
            "uid": owner["metadata"]["uid"],
        }
        await kube_admin.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "dependent",
                    "namespace": kube_ns,
                    "ownerReferences": [reference],
                },
            }
        )
        await kube_admin.delete("v1", "ConfigMap", "owner", kube_ns)
        await wait_for(
            partial(gone, kube_admin, "v1", "ConfigMap", "dependent", kube_ns), seconds=30
        )


async def test_deleting_a_namespace_finalizes_it(kube_admin: KubeAdmin) -> None:
    name = f"t-finalize-{secrets.token_hex(4)}"
    with trio.fail_after(FINALIZE_SECONDS + 30):
        await kube_admin.create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        await kube_admin.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": name}}
        )
        await kube_admin.delete("v1", "Namespace", name)
        terminating = await kube_admin.get("v1", "Namespace", name)
        assert terminating["status"]["phase"] == "Terminating"
        await wait_for(
            partial(gone, kube_admin, "v1", "Namespace", name, None), seconds=FINALIZE_SECONDS
        )


async def test_gateway_api_standard_crds_take_gateways_and_routes(
    kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    assert {"gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io"} <= set(
        gateway_crds
    )
    with trio.fail_after(30):
        crd = await kube_admin.get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "httproutes.gateway.networking.k8s.io",
        )
        bundle = crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
        gateway = await kube_admin.create(
            {
                "apiVersion": GATEWAY_API,
                "kind": "Gateway",
                "metadata": {"name": "waypoint", "namespace": kube_ns},
                "spec": {
                    "gatewayClassName": "ambit-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                },
            }
        )
        route: Obj = {
            "apiVersion": GATEWAY_API,
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": kube_ns},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                        "backendRefs": [{"name": "web-v2", "port": 80, "weight": 10}],
                    }
                ],
            },
        }
        created = await kube_admin.create(route)
        invalid = {**route, "metadata": {"name": "broken", "namespace": kube_ns}}
        invalid["spec"] = {"rules": [{"matches": [{"path": {"type": "Glob", "value": "/*"}}]}]}
        with pytest.raises(KubeError) as refused:
            await kube_admin.create(invalid)
    major, minor = (int(x) for x in re.findall(r"\d+", bundle)[:2])
    assert (major, minor) >= (1, 3)
    assert gateway["spec"]["listeners"][0]["protocol"] == "HBONE"
    assert created["spec"]["rules"][0]["backendRefs"][0]["weight"] == 10
    assert refused.value.status == 422
    assert "Glob" in refused.value.message
