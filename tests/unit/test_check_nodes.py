"""``ambit check``'s node checks as pure functions (``k8s.check.nodes``): the agent's
report read, which nodes the DaemonSets run on, which pods should be enrolled, and the
verdicts naming each node and pod."""

from __future__ import annotations

import json
from typing import Any

from k8s.check.nodes import (
    NO_NODE_SIDE,
    AgentReport,
    DaemonPod,
    Node,
    NodeSide,
    enrolment,
    excluded_namespaces,
    installed,
    plugins,
    read_report,
    readiness,
    selects,
    should_be_enrolled,
)
from k8s.install_node import AGENT, ZTUNNEL, agent_daemonset, values_from

BOTH = frozenset({ZTUNNEL, AGENT})
REPORT = AgentReport(cni_installed=True, ztunnel_connected=True, enrolled=frozenset({"shop/a"}))


def pod(ns: str, name: str, *, labels: dict[str, str] | None = None, phase: str = "Running",
        host_network: bool = False) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels or {}},
        "spec": {"nodeName": "n1", "hostNetwork": host_network},
        "status": {"phase": phase},
    }


def ready(name: str, report: AgentReport | None = None) -> DaemonPod:
    return DaemonPod(name, "Running", True, report)


def test_the_agents_report_is_read() -> None:
    text = json.dumps({
        "cni": {"installed": False, "conflist": None, "error": "no conflist in /etc/cni/net.d"},
        "ztunnel": {"connected": True}, "enrolled": ["shop/a"], "failed": {"shop/b": "netns"},
        "time": "2026-12-07T00:00:00Z",
    })  # fmt: skip
    report = read_report(text)
    assert report == AgentReport(
        cni_installed=False, cni_error="no conflist in /etc/cni/net.d", ztunnel_connected=True,
        enrolled=frozenset({"shop/a"}), failed={"shop/b": "netns"}, time="2026-12-07T00:00:00Z",
    )  # fmt: skip
    assert read_report(None) is None
    assert (read_report("{") or AgentReport()).problem.startswith("unreadable ambit.io/node-status")
    assert (read_report("[]") or AgentReport()).problem


def test_which_nodes_the_daemonsets_run_on() -> None:
    template = agent_daemonset(values_from([]))["spec"]["template"]["spec"]
    linux = {"metadata": {"labels": {"kubernetes.io/os": "linux"}}}
    windows = {"metadata": {"labels": {"kubernetes.io/os": "windows"}}}
    tainted = {**linux, "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}
    assert selects(template, linux)
    assert not selects(template, windows)
    assert selects(template, tainted)  # the default tolerates every taint
    strict = agent_daemonset(values_from(['tolerations=[{"key":"db","operator":"Exists"}]']))
    strict_template = strict["spec"]["template"]["spec"]
    assert not selects(strict_template, tainted)
    unreachable = {**linux, "spec": {"taints": [
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}  # fmt: skip
    assert selects(strict_template, unreachable)  # the DaemonSet controller tolerates it


def test_the_excluded_namespaces_are_the_agents_flag() -> None:
    agent = agent_daemonset(values_from(['excludeNamespaces=["kube-system","monitoring"]']))
    assert excluded_namespaces(agent, "ambit-system") == {"kube-system", "monitoring"}
    assert excluded_namespaces(None, "ambit-system") == {"kube-system", "ambit-system"}


def test_which_pods_should_be_enrolled() -> None:
    namespaces = {"shop": {"ambit.io/dataplane-mode": "ambient"}, "plain": {}}
    excluded = frozenset({"kube-system"})
    waypoints = frozenset({"shop/waypoint"})

    def should(p: dict[str, Any]) -> bool:
        return should_be_enrolled(p, namespaces, excluded, waypoints)

    assert should(pod("shop", "a"))
    assert not should(pod("shop", "a", labels={"ambit.io/dataplane-mode": "none"}))
    assert should(pod("plain", "b", labels={"istio.io/dataplane-mode": "ambient"}))
    assert not should(pod("plain", "b"))
    assert not should(pod("shop", "a", host_network=True))
    assert not should(pod("shop", "a", phase="Pending"))
    assert not should(pod("kube-system", "dns", labels={"ambit.io/dataplane-mode": "ambient"}))
    gateway = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert not should(pod("shop", "waypoint-1", labels=gateway))  # a waypoint's own pod
    other = {"gateway.networking.k8s.io/gateway-name": "ingress"}
    assert should(pod("shop", "ingress-1", labels=other))  # not a waypoint's


def test_no_node_side_is_a_warning_and_half_of_one_a_failure() -> None:
    none = installed(NodeSide("ambit-system", frozenset()))
    assert (none.status, none.message) == ("warn", NO_NODE_SIDE)
    assert "ambit install --node" in none.hint
    half = installed(NodeSide("ambit-system", frozenset({ZTUNNEL})))
    assert half.status == "fail"
    assert "ambit-system/ambit-node-agent" in half.message
    assert installed(NodeSide("ambit-system", BOTH)).status == "ok"


def test_a_node_without_an_agent_or_a_ready_ztunnel_is_named() -> None:
    side = NodeSide("ambit-system", BOTH, (
        Node("n1", True, agents=(ready("agent-1"),), ztunnels=(ready("zt-1"),)),
        Node("n2", True, ztunnels=(DaemonPod("zt-2", "Pending", False),)),
        Node("win", False),
    ))  # fmt: skip
    outcome = readiness(side)
    assert outcome.status == "fail"
    assert outcome.message.splitlines() == [
        "n2: no node agent pod",
        "n2: ztunnel zt-2 (Pending, not Ready)",
    ]
    assert "kubectl -n ambit-system get pods" in outcome.hint
    assert readiness(NodeSide("ambit-system", BOTH, (Node("win", False),))).status == "warn"


def test_a_node_whose_plugin_is_not_installed_is_named() -> None:
    broken = AgentReport(cni_error="no CNI config in /etc/cni/net.d")
    side = NodeSide("ambit-system", BOTH, (
        Node("n1", True, agents=(ready("agent-1", REPORT),)),
        Node("n2", True, agents=(ready("agent-2", broken),)),
        Node("n3", True, agents=(ready("agent-3"),)),
    ))  # fmt: skip
    outcome = plugins(side)
    assert outcome.message.splitlines() == [
        "n2: the plugin is not in the CNI chain: no CNI config in /etc/cni/net.d",
        "n3: agent-3 has not reported (ambit.io/node-status)",
    ]
    assert "cni.confDir" in outcome.hint


def test_each_pod_not_enrolled_is_named_with_the_agents_reason() -> None:
    report = AgentReport(
        cni_installed=True, ztunnel_connected=False, enrolled=frozenset({"shop/a"}),
        failed={"shop/c": "iptables-restore: exit 1"},
    )  # fmt: skip
    side = NodeSide("ambit-system", BOTH, (
        Node("n1", True, agents=(ready("agent-1", report),),
             expected=("shop/a", "shop/b", "shop/c")),
        Node("n2", True, expected=("shop/d",)),
        Node("win", False, expected=("shop/e",)),
        Node("n4", True, agents=(ready("agent-4", REPORT),), expected=("shop/a",)),
    ))  # fmt: skip
    outcome = enrolment(side)
    assert outcome.status == "fail"
    assert outcome.message.splitlines() == [
        "n1: not enrolled: shop/b, shop/c (iptables-restore: exit 1)",
        "n1: the node agent is not connected to ztunnel",
        "n2: no report from a node agent: shop/d",
        "win: the node side does not run there (its nodeSelector or tolerations): not"
        " captured: shop/e",
    ]
    assert "kubectl delete pod" in outcome.hint
    good = NodeSide("ambit-system", BOTH, side.nodes[3:])
    assert enrolment(good).status == "ok"
