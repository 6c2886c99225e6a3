"""``ambit check``'s node checks against the real API server, after ``ambit install`` and
``ambit install --node``. The harness plays kubelet and node agent: three Linux nodes,
the pods the DaemonSet controller makes for them bound and made Running and Ready, each
agent's ``ambit.io/node-status`` written on its pod, and pods of a meshed namespace on
the nodes (some the agent must leave alone: opted out, host network, a waypoint's). The
report names the pod an agent has not enrolled (with the agent's reason), the node
whose plugin is not in its CNI chain, and the node without an agent (the agent
DaemonSet kept off it by its nodeSelector); once all is put right, every node check
passes."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial

import pytest
import trio

from k8s.check.base import CheckConfig, Result
from k8s.check.run import run_checks
from k8s.install_node import AGENT, STATUS_ANNOTATION, ZTUNNEL
from mesh.constants import SYSTEM_NAMESPACE
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import Cluster
from tests.kube.installing import installed, node_installed
from tests.kube.kubelet import bind_pod, create_node, pod, set_pod_running
from tests.kube.test_check_pre import ambit
from tests.kube.test_install_node import daemon_pod

pytestmark = pytest.mark.kube
__all__ = ["installed", "node_installed"]  # the fixtures, used here
SECONDS = 90.0
READY = "ztunnel and the node agent are Ready on every node"
PLUGIN = "the CNI plugin is in every node's chain"
ENROLLED = "every meshed pod is enrolled by its node's agent"
INSTALLED = "the node side is installed (ztunnel and node agent DaemonSets)"
ONLY_LABELLED = "ambit.io/test-agent"  # the agent DaemonSet runs only where this is set


def status(*, installed: bool = True, enrolled: tuple[str, ...] = (),
           failed: dict[str, str] | None = None, error: str | None = None) -> str:  # fmt: skip
    return json.dumps({
        "cni": {"installed": installed,
                "conflist": "/etc/cni/net.d/10-kindnet.conflist" if installed else None,
                "error": error},
        "ztunnel": {"connected": True}, "enrolled": list(enrolled), "failed": failed or {},
        "time": "2026-12-07T00:00:00Z",
    })  # fmt: skip


class Harness:
    """Kubelet and node agent for the DaemonSets' pods, and builder of app pods."""

    def __init__(self, admin: KubeAdmin, ns: str) -> None:
        self.admin, self.ns, self.ips = admin, ns, iter(range(2, 250))

    async def run_daemon_pod(self, app: str, node: str) -> str:
        """The DaemonSet's pod for ``node``, bound there, Running and Ready; its name."""
        made = await wait_for(partial(daemon_pod, self.admin, app, node), seconds=60, interval=0.2)
        name = made["metadata"]["name"]
        if not made["spec"].get("nodeName"):
            await bind_pod(self.admin, SYSTEM_NAMESPACE, name, node)
        await set_pod_running(self.admin, SYSTEM_NAMESPACE, name, f"10.244.9.{next(self.ips)}")
        return str(name)

    async def report(self, agent: str, text: str) -> None:
        patch = {"metadata": {"annotations": {STATUS_ANNOTATION: text}}}
        await self.admin.patch("v1", "Pod", agent, patch, SYSTEM_NAMESPACE, subresource="status")

    async def app_pod(
        self, name: str, node: str, labels: dict[str, str] | None = None, *, host: bool = False
    ) -> str:
        made = pod(self.ns, name, node=node, labels=labels)
        made["spec"]["hostNetwork"] = host
        await self.admin.create(made)
        await set_pod_running(self.admin, self.ns, name, f"10.244.8.{next(self.ips)}")
        return f"{self.ns}/{name}"


@pytest.fixture
async def nodes(kube_admin: KubeAdmin, node_installed: list[Obj]) -> AsyncIterator[list[str]]:
    """Three Linux nodes; the agent DaemonSet selects the first two only (restored after)."""
    names = [f"node-{secrets.token_hex(3)}" for _ in range(3)]
    keep_off = {"spec": {"template": {"spec": {"nodeSelector": {ONLY_LABELLED: "yes"}}}}}
    with trio.fail_after(SECONDS):
        await kube_admin.patch("apps/v1", "DaemonSet", AGENT, keep_off, SYSTEM_NAMESPACE)
        for i, name in enumerate(names):
            await create_node(kube_admin, name)
            labels = {"kubernetes.io/os": "linux", **({ONLY_LABELLED: "yes"} if i < 2 else {})}
            await kube_admin.patch("v1", "Node", name, {"metadata": {"labels": labels}})
    yield names
    with trio.fail_after(SECONDS):
        for name in names:
            with suppress(NotFound):
                await kube_admin.delete("v1", "Node", name)
        back = {"spec": {"template": {"spec": {"nodeSelector": {ONLY_LABELLED: None}}}}}
        await kube_admin.patch("apps/v1", "DaemonSet", AGENT, back, SYSTEM_NAMESPACE)


async def check(cluster: Cluster) -> dict[str, Result]:
    with trio.fail_after(SECONDS):
        results = await run_checks(CheckConfig(kubeconfig=cluster.kubeconfig))
    return {r.name: r for r in results if r.group == "ambit-node"}


async def test_the_report_names_each_node_and_pod_then_passes_once_put_right(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, nodes: list[str],
    gateway_crds: list[str],
) -> None:  # fmt: skip
    a, b, c = nodes
    harness = Harness(kube_admin, kube_ns)
    with trio.fail_after(SECONDS * 2):
        meshed = {"metadata": {"labels": {"ambit.io/dataplane-mode": "ambient"}}}
        await kube_admin.patch("v1", "Namespace", kube_ns, meshed)
        agents = {n: await harness.run_daemon_pod(AGENT, n) for n in (a, b)}
        for node in nodes:
            await harness.run_daemon_pod(ZTUNNEL, node)
        enrolled = await harness.app_pod("enrolled", a)
        missing = await harness.app_pod("missing", a)
        # Not to be enrolled: opted out, on the host's network, a waypoint's own pod.
        await harness.app_pod("opted-out", a, {"ambit.io/dataplane-mode": "none"})
        await harness.app_pod("host", a, host=True)
        await kube_admin.create({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": kube_ns},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        })  # fmt: skip
        await harness.app_pod("waypoint-0", a, {"gateway.networking.k8s.io/gateway-name":
                                                "waypoint"})  # fmt: skip
        on_b = await harness.app_pod("on-b", b)
        on_c = await harness.app_pod("on-c", c)
        await harness.report(agents[a], status(enrolled=(enrolled,),
                                               failed={missing: "netns gone"}))  # fmt: skip
        no_config = "no CNI config in /etc/cni/net.d"
        await harness.report(agents[b], status(installed=False, enrolled=(on_b,),
                                               error=no_config))  # fmt: skip
    results = await check(kube_cluster)
    assert results[INSTALLED].status == "ok"
    assert results[READY].status == "fail"
    assert results[READY].message.splitlines() == [f"{c}: no node agent pod"]
    assert results[PLUGIN].message.splitlines() == [
        f"{b}: the plugin is not in the CNI chain: {no_config}"
    ]
    problems = sorted([  # nodes in the order of their names, random here
        f"{a}: not enrolled: {missing} (netns gone)",
        f"{c}: no report from a node agent: {on_c}",
    ])  # fmt: skip
    assert results[ENROLLED].message.splitlines() == problems

    # The real command, as an operator reads it.
    done = await trio.to_thread.run_sync(
        lambda: ambit("check", "--kubeconfig", str(kube_cluster.kubeconfig), timeout=SECONDS)
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    at = lines.index(f"\u00d7 {ENROLLED}")
    assert lines[at + 1 : at + 3] == [f"    {line}" for line in problems]
    assert lines[at + 3].startswith("    hint: the node agent's log names each pod")

    # Put right: an agent on the third node too, each agent reporting all its pods.
    with trio.fail_after(SECONDS * 2):
        label = {"metadata": {"labels": {ONLY_LABELLED: "yes"}}}
        await kube_admin.patch("v1", "Node", c, label)
        agents[c] = await harness.run_daemon_pod(AGENT, c)
        await harness.report(agents[a], status(enrolled=(enrolled, missing)))
        await harness.report(agents[b], status(enrolled=(on_b,)))
        await harness.report(agents[c], status(enrolled=(on_c,)))
    results = await check(kube_cluster)
    assert {name: r.status for name, r in results.items()} == {
        INSTALLED: "ok",
        READY: "ok",
        PLUGIN: "ok",
        ENROLLED: "ok",
    }
