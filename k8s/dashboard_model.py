"""What ``ambit dashboard``'s page shows, from the control plane's snapshot and the
observer's traffic graph; pure.

:func:`page_model` joins the two into one JSON document the page draws as it is:

- **nodes**: every workload (a Deployment's pods as one, named as Istio's metrics name
  them: :func:`mesh.metrics.workload_name`) and every Service of the snapshot, and the
  ends of traffic the snapshot does not know (a client outside the mesh: ``external``);
  each with what applies to it: a workload's L4 AuthorizationPolicies and
  PeerAuthentications (what its ztunnel enforces), a Service's routes, the policies bound
  at its waypoint (``targetRefs``), its DestinationRule and BackendTrafficPolicy;
- **edges**: the graph's (:func:`mesh.traffic_graph.edges`) with the ids of their two
  nodes, ``denied`` true when any of it was refused, and the ``ambit why`` question that
  explains it (a pod of the source to the Service, or to the pod and its port), when the
  snapshot can answer one;
- **series**: each node's golden metrics over the last minutes
  (:func:`mesh.traffic_series.series`), under the node's id, ``in`` and ``out``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from mesh.constants import SYSTEM_NAMESPACE
from mesh.metrics import workload_name
from mesh.model import GATEWAY_GROUP, Authorization, MeshSnapshot, Service, Workload
from mesh.model_policy import Rule
from mesh.traffic_graph import UNKNOWN

EXTERNAL: Final = "external"


def workload_id(namespace: str, name: str) -> str:
    return f"workload:{namespace}/{name}"


def service_id(namespace: str, name: str) -> str:
    return f"service:{namespace}/{name}"


def _rule_words(rule: Rule) -> str:
    """A policy rule in a line: ``from principals [...]; to methods [...]``."""
    parts = []
    for source in rule.sources:
        said = [f"{name} {list(values)}" for name, values in (
            ("principals", source.principals), ("not principals", source.not_principals),
            ("namespaces", source.namespaces), ("not namespaces", source.not_namespaces),
            ("ipBlocks", source.ip_blocks), ("requestPrincipals", source.request_principals),
        ) if values]  # fmt: skip
        parts.append("from " + (", ".join(said) or "anyone"))
    for op in rule.operations:
        said = [f"{name} {list(values)}" for name, values in (
            ("ports", op.ports), ("not ports", op.not_ports), ("hosts", op.hosts),
            ("methods", op.methods), ("not methods", op.not_methods), ("paths", op.paths),
            ("not paths", op.not_paths),
        ) if values]  # fmt: skip
        parts.append("to " + (", ".join(said) or "anything"))
    parts += [f"when {c.key} in {list(c.values)}" for c in rule.when]
    return "; ".join(parts) or "any request"


def _policy(a: Authorization, enforced_by: str) -> dict[str, Any]:
    return {
        "kind": "AuthorizationPolicy",
        "key": a.key,
        "action": a.action,
        "enforced_by": enforced_by,
        "rules": [_rule_words(r) for r in a.rules] or ["no rules"],
    }


def _binds(a: Authorization, service: Service) -> bool:
    """Whether the policy's ``targetRefs`` bind it at ``service``'s waypoint for it."""
    for ref in a.target_refs:
        key = f"{a.namespace}/{ref.name}"
        if ref.group == "" and ref.kind == "Service" and key == service.key:
            return True
        if ref.group == GATEWAY_GROUP and ref.kind == "Gateway" and key == service.waypoint:
            return True
        if ref.kind == "GatewayClass" and a.namespace == SYSTEM_NAMESPACE and service.waypoint:
            return True
    return False


def _workload_node(pods: list[Workload], snapshot: MeshSnapshot) -> dict[str, Any]:
    first = pods[0]
    policies = [_policy(a, f"ztunnel on node {first.node}") for a in snapshot.policies_for(first)]
    peer = [
        {"kind": "PeerAuthentication", "key": p.key, "mode": p.mode}
        for p in snapshot.peer_authentication_for(first)
    ]
    return {
        "id": workload_id(first.namespace, workload_name(first)),
        "kind": "waypoint" if first.native_tunnel else "workload",
        "namespace": first.namespace,
        "name": workload_name(first),
        "pods": sorted(p.name for p in pods),
        "nodes": sorted({p.node for p in pods}),
        "identities": sorted({str(p.identity) for p in pods}),
        "meshed": first.protocol == "HBONE",
        "waypoint": first.waypoint,
        "policies": [*policies, *peer],
        "routes": [],
    }


def _service_node(s: Service, snapshot: MeshSnapshot) -> dict[str, Any]:
    where = f"waypoint {s.waypoint}" if s.waypoint else "a waypoint (none is bound)"
    policies = [_policy(a, where) for a in snapshot.authorizations if _binds(a, s)]
    routes = []
    for kind, found in (("HTTPRoute", snapshot.http_routes), ("GRPCRoute", snapshot.grpc_routes)):
        for route in found:
            parents = [p for p in route.parents if p.group == "" and p.kind == "Service"
                       and f"{p.namespace or route.namespace}/{p.name}" == s.key]  # fmt: skip
            if parents:
                ports = sorted({p.port for p in parents if p.port})
                routes.append({"kind": kind, "key": route.key, "rules": len(route.rules),
                               "ports": ports, "hostnames": list(route.hostnames)})  # fmt: skip
    traffic = []
    rule = snapshot.destination_rule(s.key)
    if rule is not None:
        traffic.append({"kind": "DestinationRule", "key": rule.key})
    btp = snapshot.backend_traffic_policy(s.key)
    if btp is not None:
        traffic.append({"kind": "BackendTrafficPolicy", "key": btp.key})
    return {
        "id": service_id(s.namespace, s.name),
        "kind": "service",
        "namespace": s.namespace,
        "name": s.name,
        "hostname": s.hostname,
        "vip": s.vip,
        "ports": [p.port for p in s.ports],
        "waypoint": s.waypoint,
        "endpoints": len(s.endpoints),
        "backends": sorted(
            {
                workload_id(w.namespace, workload_name(w))
                for e in s.endpoints
                if (w := snapshot.workload(e.workload_uid)) is not None
            }
        ),
        "policies": policies,
        "routes": routes,
        "traffic_policies": traffic,
    }


def _external(node_id: str, name: str) -> dict[str, Any]:
    return {"id": node_id, "kind": EXTERNAL, "namespace": "", "name": name,
            "policies": [], "routes": []}  # fmt: skip


class _Index:
    def __init__(self, snapshot: MeshSnapshot | None) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, list[Workload]] = {}
        self.by_host: dict[str, Service] = {}
        if snapshot is None:
            return
        for w in snapshot.workloads:
            self.pods.setdefault(workload_id(w.namespace, workload_name(w)), []).append(w)
        for pods in self.pods.values():
            node = _workload_node(sorted(pods, key=lambda p: p.name), snapshot)
            self.nodes[node["id"]] = node
        for s in snapshot.services:
            self.nodes[service_id(s.namespace, s.name)] = _service_node(s, snapshot)
            self.by_host[s.hostname] = s

    def source(self, namespace: str, workload: str) -> str:
        if workload == UNKNOWN:
            return self._add(f"{EXTERNAL}:unknown", "outside the mesh")
        return self._known(workload_id(namespace, workload), f"{namespace}/{workload}")

    def destination(self, destination: str) -> str:
        if "/" in destination:
            return self._known(workload_id(*destination.split("/", 1)), destination)
        service = self.by_host.get(destination)
        if service is None:
            return self._add(f"{EXTERNAL}:{destination}", destination)
        return service_id(service.namespace, service.name)

    def _known(self, node_id: str, name: str) -> str:
        return node_id if node_id in self.nodes else self._add(node_id, name)

    def _add(self, node_id: str, name: str) -> str:
        self.nodes.setdefault(node_id, _external(node_id, name))
        return node_id


def _why(edge: Mapping[str, Any], src: str, dst: str, index: _Index) -> dict[str, Any] | None:
    """The ``ambit why`` question of an edge: a pod of its source to its destination."""
    pods = index.pods.get(src)
    if not pods:
        return None
    ask: dict[str, Any] = {"from": f"{pods[0].namespace}/{pods[0].name}"}
    if edge["protocol"] == "tcp":
        ask["tcp"] = True
    node = index.nodes[dst]
    if node["kind"] == "service":
        ask["to"] = f"{node['namespace']}/{node['name']}"
        return ask
    targets = index.pods.get(dst)
    if not targets or not targets[0].container_ports:
        return None
    ask["to"] = f"{targets[0].namespace}/{targets[0].name}"
    ask["port"] = targets[0].container_ports[0][1]
    return ask


def page_model(
    snapshot: MeshSnapshot | None,
    graph: Mapping[str, Any],
    series: Mapping[str, Any],
) -> dict[str, Any]:
    """The page's document: nodes, edges and series (see the module's docstring);
    ``graph`` is :meth:`k8s.observer.Observer.graph`'s, ``series``
    :func:`mesh.traffic_series.series`'."""
    index = _Index(snapshot)
    edges = []
    for edge in graph.get("edges", ()):
        src = index.source(edge["source"]["namespace"], edge["source"]["workload"])
        dst = index.destination(edge["destination"])
        edges.append({
            **edge,
            "id": f"{src}->{dst}:{edge['protocol']}",
            "from": src,
            "to": dst,
            "denied": edge["denied"] > 0,
            "denied_count": edge["denied"],
            "why": _why(edge, src, dst, index),
        })  # fmt: skip
    plotted: dict[str, dict[str, Any]] = {}
    for name, lines in series.get("nodes", {}).items():
        direction, _, end = name.partition(":")
        node_id = index.destination(end) if direction == "in" else index.source(*_split(end))
        plotted.setdefault(node_id, {})[direction] = lines
    return {
        "version": snapshot.version if snapshot is not None else None,
        "window_seconds": graph.get("window_seconds"),
        "proxies": list(graph.get("proxies", ())),
        "nodes": sorted(index.nodes.values(), key=lambda n: (n["kind"], n["id"])),
        "edges": edges,
        "series": {"ends": list(series.get("ends", ())), "nodes": plotted},
    }


def _split(name: str) -> tuple[str, str]:
    namespace, _, workload = name.partition("/")
    return namespace, workload
