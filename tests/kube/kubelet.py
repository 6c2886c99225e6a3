"""The harness plays scheduler and kubelet, which the test cluster has neither of:
Node objects, a Pod bound to a node (``spec.nodeName`` at creation or the
``binding`` subresource, as a scheduler does), and a Pod's status written through
``/status`` with its IP and Ready, as a kubelet does; ``running_pods`` does all
of it for one namespace while a test runs. Small builders for the objects tests
create sit here too."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress

import trio

from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for

SERVICE_ACCOUNT_SECONDS = 30.0  # the controller manager's first controllers start late


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def namespace(name: str, labels: Mapping[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels or {})},
    }


def pod(
    ns: str,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    node: str | None = None,
    service_account: str = "default",
    port: int = 8080,
) -> Obj:
    spec: Obj = {
        "serviceAccountName": service_account,
        "containers": [
            {"name": "app", "image": "example.invalid/app:1", "ports": [{"containerPort": port}]}
        ],
    }
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
        "spec": spec,
    }


def service(
    ns: str, name: str, selector: Mapping[str, str], *, port: int = 80, target_port: int = 8080
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": dict(selector),
            "ports": [{"name": "http", "port": port, "targetPort": target_port}],
        },
    }


async def create_node(admin: KubeAdmin, name: str, *, address: str = "127.0.0.1") -> Obj:
    """A Node as a kubelet registers it, Ready. With no kubelet heart-beating it
    turns Ready=Unknown after about a minute; nothing is evicted."""
    node = await admin.create(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        }
    )
    status = {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": _now(),
                    "lastTransitionTime": _now(),
                }
            ],
        }
    }
    await admin.patch("v1", "Node", name, status, subresource="status")
    return node


async def bind_pod(admin: KubeAdmin, ns: str, name: str, node: str) -> None:
    """Schedule a pending Pod onto ``node`` the way kube-scheduler does."""
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    await admin.post_subresource("v1", "Pod", name, "binding", binding, ns)


async def set_pod_running(
    admin: KubeAdmin, ns: str, name: str, pod_ip: str, *, ready: bool = True
) -> Obj:
    """Write the status a kubelet would: Running, ``podIP``, and Ready."""
    flag = "True" if ready else "False"
    conditions = [
        {"type": kind, "status": flag, "lastTransitionTime": _now()}
        for kind in ("Initialized", "ContainersReady", "Ready")
    ]
    conditions[0]["status"] = "True"
    status = {
        "status": {
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": _now(),
            "conditions": conditions,
        }
    }
    return await admin.patch("v1", "Pod", name, status, ns, subresource="status")


async def remove_pod(admin: KubeAdmin, ns: str, name: str) -> None:
    """What a kubelet does once a deleted Pod's containers have stopped: delete it
    with no grace period. Without it a deleted Pod stays Terminating (and its
    endpoint ``terminating``) for its whole grace period, 30 s by default."""
    await admin.delete("v1", "Pod", name, ns, grace_period_seconds=0)


async def wait_default_service_account(
    admin: KubeAdmin, ns: str, *, seconds: float = SERVICE_ACCOUNT_SECONDS
) -> Obj:
    """The namespace's ``default`` ServiceAccount, once the controller manager has
    made it (Pods cannot be created in the namespace before)."""

    async def probe() -> Obj | None:
        try:
            return await admin.get("v1", "ServiceAccount", "default", ns)
        except NotFound:
            return None

    return await wait_for(probe, seconds=seconds)


@asynccontextmanager
async def running_pods(admin: KubeAdmin, ns: str, node: str) -> AsyncIterator[None]:
    """While inside, scheduler and kubelet for every Pod of ``ns``: each new one is
    bound to ``node`` (a Node made here, deleted on exit) and made Running and Ready
    with an IP of its own, each deleted one is removed once it is terminating (the
    kubelet's confirmation: without it a Deployment's rollout, or its namespace's
    deletion, would wait forever)."""
    ips = (f"10.244.{n // 250}.{n % 250 + 2}" for n in itertools.count())
    await create_node(admin, node)

    async def kubelet() -> None:
        while True:
            for pod in await admin.list("v1", "Pod", ns):
                name = pod["metadata"]["name"]
                with suppress(NotFound):
                    if pod["metadata"].get("deletionTimestamp"):
                        await remove_pod(admin, ns, name)
                    elif (pod.get("status") or {}).get("phase") != "Running":
                        if not pod["spec"].get("nodeName"):
                            await bind_pod(admin, ns, name, node)
                        await set_pod_running(admin, ns, name, next(ips))
            await trio.sleep(0.2)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kubelet)
            yield
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10), suppress(NotFound):
            await admin.delete("v1", "Node", node)
