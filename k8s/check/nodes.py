"""Checks of the node side, per node: what ``ambit install --node`` puts on a cluster
(:mod:`k8s.install_node`) and what its node agents report.

- the two DaemonSets exist (neither: a warning, as L4 needs them; one: a failure);
- on every node the DaemonSets select, the node agent's pod and ztunnel's are Running
  and Ready (the API's conditions, as the kubelet writes them);
- each agent has put the plugin in its node's CNI chain, by its own report: the
  annotation :data:`k8s.install_node.STATUS_ANNOTATION` on its pod (docs/node.md);
- every pod that should be in the mesh on a node is enrolled there, by the same report:
  pods on that node, not host network, not in an excluded namespace (the agent's
  ``--exclude-namespaces``), meshed by the one label rule
  (:func:`k8s.translate_parts.meshed_by_labels`), not a waypoint's own
  (:func:`k8s.translate_parts.native_tunnel`), and Running. Each missing one is named.

The verdicts are pure functions (:func:`readiness`, :func:`plugins`, :func:`enrolment`) of
a :class:`NodeSide`, which :func:`node_side` reads once per run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from k8s import manifests as m
from k8s.check.base import OK, Context, Json, Outcome, answered, fail, warn
from k8s.install_node import AGENT, STATUS_ANNOTATION, ZTUNNEL
from k8s.translate_parts import meshed_by_labels, native_tunnel
from mesh.constants import WAYPOINT_CLASSES

NO_NODE_SIDE: Final = "no node side is installed: pods are not captured"
INSTALL_NODE_HINT: Final = (
    "install it: ambit install --node | kubectl apply -f - (docs/node.md). Without it no"
    " pod is captured and no traffic is meshed, whatever the labels say"
)
GATEWAY_CRD: Final = "gateways.gateway.networking.k8s.io"
_CACHE_KEY: Final = "node-side"
SHOWN: Final = 10  # names shown per list before "and N more"


@dataclass(frozen=True)
class AgentReport:
    """The agent's :data:`STATUS_ANNOTATION`, read; ``problem`` when it cannot be."""

    cni_installed: bool = False
    conflist: str | None = None
    cni_error: str | None = None
    ztunnel_connected: bool = False
    enrolled: frozenset[str] = frozenset()
    failed: Mapping[str, str] = field(default_factory=dict)
    time: str = ""
    problem: str = ""


def read_report(text: str | None) -> AgentReport | None:
    """The annotation's JSON (None: no annotation yet)."""
    if text is None:
        return None
    try:
        doc = json.loads(text)
        cni, ztunnel = doc.get("cni") or {}, doc.get("ztunnel") or {}
        failed = doc.get("failed") or {}
        return AgentReport(
            cni_installed=cni.get("installed") is True,
            conflist=cni.get("conflist"),
            cni_error=cni.get("error"),
            ztunnel_connected=ztunnel.get("connected") is True,
            enrolled=frozenset(str(p) for p in doc.get("enrolled") or []),
            failed={str(k): str(v) for k, v in failed.items()},
            time=str(doc.get("time") or ""),
        )
    except (ValueError, AttributeError, TypeError) as error:
        return AgentReport(problem=f"unreadable {STATUS_ANNOTATION}: {error}")


@dataclass(frozen=True)
class DaemonPod:
    name: str
    phase: str
    ready: bool
    report: AgentReport | None = None  # an agent's

    def describe(self) -> str:
        return f"{self.name} ({self.phase or 'Pending'}{', not Ready' if not self.ready else ''})"


@dataclass(frozen=True)
class Node:
    name: str
    selected: bool  # the DaemonSets' nodeSelector and tolerations let them run there
    agents: tuple[DaemonPod, ...] = ()
    ztunnels: tuple[DaemonPod, ...] = ()
    expected: tuple[str, ...] = ()  # namespace/name of the pods that should be enrolled

    @property
    def agent(self) -> DaemonPod | None:
        """The agent that speaks for the node: a Ready one, else any."""
        ready = [a for a in self.agents if a.ready and a.phase == "Running"]
        return next(iter(ready or self.agents), None)


@dataclass(frozen=True)
class NodeSide:
    namespace: str
    daemonsets: frozenset[str]  # which of ztunnel, ambit-node-agent exist
    nodes: tuple[Node, ...] = ()


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def installed(side: NodeSide) -> Outcome:
    if not side.daemonsets:
        return warn(NO_NODE_SIDE, INSTALL_NODE_HINT)
    missing = [n for n in (ZTUNNEL, AGENT) if n not in side.daemonsets]
    if missing:
        return fail(
            f"no DaemonSet {', '.join(f'{side.namespace}/{n}' for n in missing)}: the node"
            " side is half installed",
            "apply it again: ambit install --node | kubectl apply -f -",
        )
    return OK


def _pod_problem(node: Node, what: str, pods: tuple[DaemonPod, ...]) -> str:
    if not pods:
        return f"{node.name}: no {what} pod"
    if any(p.ready and p.phase == "Running" for p in pods):
        return ""
    return f"{node.name}: {what} {', '.join(p.describe() for p in pods)}"


def readiness(side: NodeSide) -> Outcome:
    """Every selected node has a Running and Ready agent and ztunnel."""
    problems: list[str] = []
    for node in side.nodes:
        if node.selected:
            for what, pods in (("node agent", node.agents), ("ztunnel", node.ztunnels)):
                problem = _pod_problem(node, what, pods)
                problems += [problem] if problem else []
    if problems:
        ns = side.namespace
        return fail(
            "\n".join(problems),
            f"kubectl -n {ns} get pods -o wide -l 'app in ({AGENT},{ZTUNNEL})'; then kubectl"
            f" -n {ns} describe pod POD (a pod not scheduled: its tolerations, nodeSelector"
            f" and the node's resources) and kubectl -n {ns} logs POD",
        )
    selected = sum(n.selected for n in side.nodes)
    if not selected:
        return warn(
            f"the DaemonSets select none of the {len(side.nodes)} nodes: pods are not captured",
            "check the nodeSelector and tolerations values (ambit install --node --set ...)",
        )
    return Outcome("ok", f"Ready on {selected} nodes")


def plugins(side: NodeSide) -> Outcome:
    """Every node's agent reports the plugin in its CNI chain."""
    problems: list[str] = []
    for node in side.nodes:
        agent = node.agent
        if not node.selected or agent is None:
            continue  # readiness() names it
        report = agent.report
        if report is None:
            problems.append(f"{node.name}: {agent.name} has not reported ({STATUS_ANNOTATION})")
        elif report.problem:
            problems.append(f"{node.name}: {agent.name}: {report.problem}")
        elif not report.cni_installed:
            why = f": {report.cni_error}" if report.cni_error else ""
            problems.append(f"{node.name}: the plugin is not in the CNI chain{why}")
    if problems:
        return fail(
            "\n".join(problems),
            f"kubectl -n {side.namespace} logs POD (the node agent) says why. The agent adds"
            " ambit-cni to the first conflist of its node's CNI config directory: is"
            " cni.confDir (and cni.binDir) this cluster's? k3s: /var/lib/rancher/k3s/agent/"
            "etc/cni/net.d and /var/lib/rancher/k3s/data/cni",
        )
    return OK


def enrolment(side: NodeSide) -> Outcome:
    """Every pod that should be in the mesh is enrolled by its node's agent."""
    problems: list[str] = []
    for node in side.nodes:
        if not node.expected:
            continue
        agent = node.agent
        if not node.selected:
            problems.append(
                f"{node.name}: the node side does not run there (its nodeSelector or"
                f" tolerations): not captured: {_listed(node.expected)}"
            )
            continue
        report = agent.report if agent is not None else None
        if report is None or report.problem:
            problems.append(f"{node.name}: no report from a node agent: {_listed(node.expected)}")
            continue
        missing = [p for p in node.expected if p not in report.enrolled]
        if missing:
            named = [f"{p} ({report.failed[p]})" if p in report.failed else p for p in missing]
            problems.append(f"{node.name}: not enrolled: {_listed(named)}")
        if not report.ztunnel_connected:
            problems.append(f"{node.name}: the node agent is not connected to ztunnel")
    if problems:
        ns = side.namespace
        return fail(
            "\n".join(problems),
            f"the node agent's log names each pod: kubectl -n {ns} logs POD | grep NAMESPACE/"
            "NAME. A pod whose capture failed is tried again when it is made again (kubectl"
            " delete pod, its controller makes it anew); a pod that should stay out: label"
            " it ambit.io/dataplane-mode=none",
        )
    expected = sum(len(n.expected) for n in side.nodes)
    return Outcome("ok", f"{expected} pods enrolled")


# Reading the cluster.


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _tolerated(taint: Mapping[str, Any], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    if taint.get("effect") == "PreferNoSchedule":
        return True
    if str(taint.get("key", "")).startswith("node.kubernetes.io/"):
        return True  # the DaemonSet controller tolerates these itself
    for t in tolerations:
        key_ok = (not t.get("key") and t.get("operator") == "Exists") or (
            t.get("key") == taint.get("key")
            and (t.get("operator") == "Exists" or t.get("value", "") == taint.get("value", ""))
        )
        if key_ok and t.get("effect", "") in ("", taint.get("effect")):
            return True
    return False


def selects(template: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether a DaemonSet's pod template (its nodeSelector, tolerations) runs on ``node``."""
    selector = template.get("nodeSelector") or {}
    labels = _labels(node)
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    taints = (node.get("spec") or {}).get("taints") or []
    return all(_tolerated(t, template.get("tolerations") or []) for t in taints)


def excluded_namespaces(agent: Mapping[str, Any] | None, namespace: str) -> frozenset[str]:
    """The agent DaemonSet's ``--exclude-namespaces`` (else kube-system and ambit's)."""
    if agent is not None:
        spec = agent["spec"]["template"]["spec"]
        for container in spec.get("containers") or []:
            argv = [*(container.get("command") or []), *(container.get("args") or [])]
            if "--exclude-namespaces" in argv[:-1]:
                value = argv[argv.index("--exclude-namespaces") + 1]
                return frozenset(n for n in value.split(",") if n)
    return frozenset({"kube-system", namespace})


def should_be_enrolled(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, Mapping[str, str]],
    excluded: frozenset[str],
    waypoints: frozenset[str],
) -> bool:
    """Whether the node agent must enroll ``pod`` (docs/node.md)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    ns = str(meta.get("namespace") or "")
    if spec.get("hostNetwork") or ns in excluded or meta.get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") != "Running":
        return False
    labels = _labels(pod)
    if not meshed_by_labels(labels, namespace_labels.get(ns)):
        return False
    typed = m.Pod(name=str(meta.get("name")), namespace=ns, labels=tuple(labels.items()))
    return not native_tunnel(typed, lambda key: key in waypoints)


async def _waypoints(context: Context) -> frozenset[str]:
    """``namespace/name`` of every Gateway of a waypoint class (none without the CRD)."""
    crd = await context.crd(GATEWAY_CRD)
    if crd is None:
        return frozenset()
    served = [v["name"] for v in crd["spec"].get("versions") or [] if v.get("served")]
    version = next((v for v in ("v1", "v1beta1") if v in served), None)
    if version is None:
        return frozenset()
    gateways = await context.list_items(f"/apis/gateway.networking.k8s.io/{version}/gateways")
    return frozenset(
        f"{g['metadata']['namespace']}/{g['metadata']['name']}"
        for g in gateways
        if (g.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES
    )


def _daemon_pods(pods: list[Json], report: bool) -> dict[str, list[DaemonPod]]:
    out: dict[str, list[DaemonPod]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        annotation = (meta.get("annotations") or {}).get(STATUS_ANNOTATION)
        made = DaemonPod(
            name=str(meta.get("name")),
            phase=str((pod.get("status") or {}).get("phase") or ""),
            ready=_ready(pod),
            report=read_report(annotation) if report else None,
        )
        out.setdefault(str((pod.get("spec") or {}).get("nodeName") or ""), []).append(made)
    return out


class _Answered(Exception):
    """An error answer that ends the reading: every node check reports it."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


async def _daemonset(context: Context, name: str) -> Json | None:
    path = f"/apis/apps/v1/namespaces/{context.namespace}/daemonsets/{name}"
    status, body = await context.get(path)
    if status == 404:
        return None
    if status != 200:
        raise _Answered(answered(status, body, f"GET DaemonSet {context.namespace}/{name}"))
    return body


async def _expected(context: Context, excluded: frozenset[str]) -> dict[str, list[str]]:
    """By node, ``namespace/name`` of each pod that should be enrolled there."""
    namespaces = {
        str(n["metadata"]["name"]): _labels(n)
        for n in await context.list_items("/api/v1/namespaces")
    }
    waypoints = await _waypoints(context)
    expected: dict[str, list[str]] = {}
    running = await context.list_items("/api/v1/pods", {"fieldSelector": "status.phase=Running"})
    for pod in running:
        if should_be_enrolled(pod, namespaces, excluded, waypoints):
            meta = pod["metadata"]
            node = str(pod["spec"].get("nodeName") or "")
            expected.setdefault(node, []).append(f"{meta['namespace']}/{meta['name']}")
    return expected


async def node_side(context: Context) -> NodeSide:
    """The node side as the API server shows it, read once per run."""
    cached = context.cache.get(_CACHE_KEY)
    if isinstance(cached, NodeSide):
        return cached
    ns = context.namespace
    daemonsets = {n: await _daemonset(context, n) for n in (ZTUNNEL, AGENT)}
    present = frozenset(n for n, d in daemonsets.items() if d is not None)
    side = NodeSide(ns, present)
    if present:
        template = next(d for d in daemonsets.values() if d is not None)["spec"]["template"]
        expected = await _expected(context, excluded_namespaces(daemonsets[AGENT], ns))
        pods_path = f"/api/v1/namespaces/{ns}/pods"
        agents = _daemon_pods(
            await context.list_items(pods_path, {"labelSelector": f"app={AGENT}"}), True
        )
        ztunnels = _daemon_pods(
            await context.list_items(pods_path, {"labelSelector": f"app={ZTUNNEL}"}), False
        )
        nodes = [
            Node(
                name=(name := str(n["metadata"]["name"])),
                selected=selects(template["spec"], n),
                agents=tuple(agents.get(name, [])),
                ztunnels=tuple(ztunnels.get(name, [])),
                expected=tuple(sorted(expected.get(name, []))),
            )
            for n in await context.list_items("/api/v1/nodes")
        ]
        side = NodeSide(ns, present, tuple(sorted(nodes, key=lambda n: n.name)))
    context.cache[_CACHE_KEY] = side
    return side


async def _verdict(context: Context, judge: Callable[[NodeSide], Outcome]) -> Outcome:
    try:
        side = await node_side(context)
    except _Answered as error:
        return error.outcome
    return judge(side)


async def installed_check(context: Context) -> Outcome:
    return await _verdict(context, installed)


async def readiness_check(context: Context) -> Outcome:
    return await _verdict(context, readiness)


async def plugins_check(context: Context) -> Outcome:
    return await _verdict(context, plugins)


async def enrolment_check(context: Context) -> Outcome:
    return await _verdict(context, enrolment)
