"""The desired local cluster, computed from manifests by pure functions.

:func:`plan_cluster` places pods on nodes, gives pods, nodes and Services
their addresses (stable across calls through :class:`Allocation`) and finds
each Service's endpoints. :func:`render_service_rules` and
:func:`render_hosts` turn a plan into the per-pod iptables chain and hosts
file. Nothing here touches the system.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from k8s.endpoints import selects, target_port
from k8s.local.config import DEFAULT_NODES, ClusterConfig
from k8s.local.errors import LocalClusterError
from k8s.local.objects import ManifestProblem
from k8s.manifests import Gateway, K8sObject, Namespace, Pod, Service, ServicePortSpec
from k8s.store import ObjectRef, describe, ref_of
from k8s.translate import in_mesh, native_tunnel
from mesh.constants import DEFAULT_CLUSTER_DOMAIN, WAYPOINT_CLASSES

SERVICES_CHAIN = "AMBIT-SERVICES"
CLUSTER_DOMAIN = DEFAULT_CLUSTER_DOMAIN
PodRef = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Allocation:
    """Addresses and placements handed out so far; kept so they never move."""

    pod_ips: Mapping[PodRef, str] = field(default_factory=dict)
    pod_nodes: Mapping[PodRef, str] = field(default_factory=dict)
    node_ips: Mapping[str, str] = field(default_factory=dict)
    service_ips: Mapping[PodRef, str] = field(default_factory=dict)
    veths: Mapping[str, str] = field(default_factory=dict)
    next_pod: int = 0
    next_service: int = 0


@dataclass(frozen=True)
class NodePlan:
    name: str
    ip: str
    netns: str
    veth: str


@dataclass(frozen=True)
class PodPlan:
    spec: Pod
    node: str
    ip: str
    netns: str
    veth: str
    identity: str
    meshed: bool  # in the mesh: captured by its node's ztunnel unless a native tunnel
    native_tunnel: bool = False  # a waypoint's pod: speaks HBONE itself, never captured

    @property
    def ref(self) -> PodRef:
        return (self.spec.namespace, self.spec.name)


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    pod: str


@dataclass(frozen=True)
class ServicePortPlan:
    port: ServicePortSpec
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class ServicePlan:
    spec: Service
    vip: str
    ports: tuple[ServicePortPlan, ...]


@dataclass(frozen=True)
class ClusterPlan:
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    services: tuple[ServicePlan, ...]
    allocation: Allocation


def plan_cluster(
    config: ClusterConfig,
    objects: Iterable[K8sObject],
    previous: Allocation,
    ready: Collection[PodRef] | None = None,
) -> ClusterPlan:
    """The cluster ``objects`` describe; ``ready`` limits endpoints (None: every pod)."""
    namespaces: dict[str, Namespace] = {}
    pods: list[Pod] = []
    services: list[Service] = []
    waypoints: set[str] = set()  # keys of waypoint Gateways: their pods are native tunnels
    for obj in objects:
        if isinstance(obj, Namespace):
            namespaces[obj.name] = obj
        elif isinstance(obj, Pod):
            pods.append(obj)
        elif isinstance(obj, Service):
            services.append(obj)
        elif isinstance(obj, Gateway) and obj.gateway_class in WAYPOINT_CLASSES:
            waypoints.add(f"{obj.namespace}/{obj.name}")
    pods.sort(key=lambda p: (p.namespace, p.name))
    services.sort(key=lambda s: (s.namespace, s.name))

    placement = _place(pods, previous.pod_nodes)
    node_names = sorted(set(placement.values()) | set(previous.node_ips))
    node_ips = _allocate_nodes(config, node_names, previous.node_ips)
    veths = _allocate_veths(config, node_names, pods, previous.veths)
    pod_ips, next_pod = _allocate(
        [(p.namespace, p.name) for p in pods],
        previous.pod_ips,
        previous.next_pod,
        config.pod_ip,
        config.pod_capacity,
        "pod cidr",
    )
    service_ips, next_service = _allocate_services(config, services, previous)

    node_plans = tuple(
        NodePlan(n, node_ips[n], config.node_netns(n), veths[f"node:{n}"]) for n in node_names
    )
    tunnels = {(p.namespace, p.name) for p in pods if native_tunnel(p, waypoints.__contains__)}
    pod_plans = tuple(
        PodPlan(
            spec=p,
            node=placement[(p.namespace, p.name)],
            ip=pod_ips[(p.namespace, p.name)],
            netns=config.pod_netns(p.namespace, p.name),
            veth=veths[f"pod:{p.namespace}/{p.name}"],
            identity=config.identity(p.namespace, p.service_account),
            meshed=(p.namespace, p.name) in tunnels or in_mesh(p, namespaces.get(p.namespace)),
            native_tunnel=(p.namespace, p.name) in tunnels,
        )
        for p in pods
    )
    endpoints_from = [p for p in pod_plans if ready is None or p.ref in ready]
    service_plans = tuple(
        ServicePlan(s, service_ips[(s.namespace, s.name)], _service_ports(s, endpoints_from))
        for s in services
    )
    allocation = Allocation(
        pod_ips=pod_ips,
        pod_nodes=placement,
        node_ips=node_ips,
        service_ips=service_ips,
        veths=veths,
        next_pod=next_pod,
        next_service=next_service,
    )
    return ClusterPlan(node_plans, pod_plans, service_plans, allocation)


def admit(
    config: ClusterConfig,
    allocation: Allocation,
    obj: K8sObject,
    others: Mapping[ObjectRef, K8sObject],
) -> str | None:
    """What the API server would refuse that depends on the cluster: a Service's
    ``clusterIP`` outside the service CIDR, or already another Service's."""
    if not isinstance(obj, Service) or obj.cluster_ip is None:
        return None
    where = describe(ref_of(obj))
    try:
        inside = ipaddress.ip_address(obj.cluster_ip) in config.service_cidr
    except ValueError:
        inside = False
    if not inside:
        return (
            f"{where}: spec.clusterIP: {obj.cluster_ip} is not in the service CIDR"
            f" {config.service_cidr}; remove it or use an address in that range"
        )
    taken = allocation.service_ips
    for ref, other in others.items():
        ip = other.cluster_ip if isinstance(other, Service) else None
        ip = ip or taken.get((ref[1], ref[2])) if ref[0] == "Service" else ip
        if ref != ref_of(obj) and ip == obj.cluster_ip:
            return (
                f"{where}: spec.clusterIP: {obj.cluster_ip} is already allocated to {describe(ref)}"
            )
    return None


def _place(pods: list[Pod], previous: Mapping[PodRef, str]) -> dict[PodRef, str]:
    placement: dict[PodRef, str] = {}
    load = dict.fromkeys(DEFAULT_NODES, 0)
    unplaced: list[PodRef] = []
    for pod in pods:
        ref = (pod.namespace, pod.name)
        node = pod.node_name or previous.get(ref)
        if node is None:
            unplaced.append(ref)
            continue
        placement[ref] = node
        if node in load:
            load[node] += 1
    for ref in unplaced:
        node = min(DEFAULT_NODES, key=lambda n: (load[n], n))
        placement[ref] = node
        load[node] += 1
    return placement


def _allocate_nodes(
    config: ClusterConfig, names: list[str], previous: Mapping[str, str]
) -> dict[str, str]:
    result = {n: previous[n] for n in names if n in previous}
    used = set(result.values())
    index = 0
    for name in names:
        if name in result:
            continue
        while str(config.node_ip(index)) in used:
            index += 1
        result[name] = str(config.node_ip(index))
        used.add(result[name])
    return result


def _allocate_veths(
    config: ClusterConfig, nodes: list[str], pods: list[Pod], previous: Mapping[str, str]
) -> dict[str, str]:
    keys = [f"node:{n}" for n in nodes] + [f"pod:{p.namespace}/{p.name}" for p in pods]
    result = {k: previous[k] for k in keys if k in previous}
    used = set(result.values())
    for key in keys:
        if key in result:
            continue
        attempt = 0
        while config.veth_name(key, attempt) in used:
            attempt += 1
        result[key] = config.veth_name(key, attempt)
        used.add(result[key])
    return result


def _allocate(
    refs: list[PodRef],
    previous: Mapping[PodRef, str],
    start: int,
    address_of: Callable[[int], ipaddress.IPv4Address],
    capacity: int,
    what: str,
    reserved: Collection[str] = (),
) -> tuple[dict[PodRef, str], int]:
    """Keep old addresses; hand new ones out round-robin so freed ones are not reused at once."""
    result = {r: previous[r] for r in refs if r in previous}
    used = set(result.values()) | set(reserved)
    counter = start % capacity
    for ref in refs:
        if ref in result:
            continue
        for _ in range(capacity):
            candidate = str(address_of(counter))
            counter = (counter + 1) % capacity
            if candidate not in used:
                break
        else:
            raise LocalClusterError(f"the {what} is full; use a larger --{what.replace(' ', '-')}")
        result[ref] = candidate
        used.add(candidate)
    return result, counter


def _allocate_services(
    config: ClusterConfig, services: list[Service], previous: Allocation
) -> tuple[dict[PodRef, str], int]:
    fixed: dict[PodRef, str] = {}
    for service in services:
        if not service.cluster_ip or service.cluster_ip == "None":
            continue
        try:
            vip = ipaddress.IPv4Address(service.cluster_ip)
        except ValueError:
            vip = None
        if vip is None or vip not in config.service_cidr:
            raise ManifestProblem(
                f"Service {service.namespace}/{service.name}: spec.clusterIP:"
                f" {service.cluster_ip} is not in the service CIDR {config.service_cidr};"
                " remove it or use an address in that range"
            )
        fixed[(service.namespace, service.name)] = str(vip)
    refs = [(s.namespace, s.name) for s in services if (s.namespace, s.name) not in fixed]
    keep = {r: ip for r, ip in previous.service_ips.items() if ip not in fixed.values()}
    allocated, counter = _allocate(
        refs,
        keep,
        previous.next_service,
        config.service_ip,
        config.service_capacity,
        "service cidr",
        reserved=set(fixed.values()),
    )
    return {**fixed, **allocated}, counter


def _service_ports(service: Service, pods: Iterable[PodPlan]) -> tuple[ServicePortPlan, ...]:
    members = [
        p
        for p in pods
        if selects(service.namespace, service.selector, p.spec.namespace, dict(p.spec.labels))
    ]
    plans: list[ServicePortPlan] = []
    for port in service.ports:
        endpoints: list[Endpoint] = []
        for pod in members:
            target = target_port(port.target_port, dict(pod.spec.named_ports))
            if target is None:
                continue
            endpoints.append(Endpoint(pod.ip, target, f"{pod.spec.namespace}/{pod.spec.name}"))
        plans.append(ServicePortPlan(port, tuple(endpoints)))
    return tuple(plans)


def render_service_rules(config: ClusterConfig, services: Iterable[ServicePlan]) -> str:
    """``iptables-restore --noflush`` input that rewrites the pod's service chains.

    nat: one DNAT per endpoint, picked at random with kube-proxy's falling
    probabilities (1/n, 1/(n-1), ... 1). filter: anything still addressed to the
    service CIDR (no endpoints, unknown port) is refused at once instead of
    timing out.
    """
    nat = ["*nat", f":{SERVICES_CHAIN} - [0:0]", f"-F {SERVICES_CHAIN}"]
    for service in services:
        for port_plan in service.ports:
            proto = port_plan.port.protocol.lower()
            match = f"-d {service.vip}/32 -p {proto} -m {proto} --dport {port_plan.port.port}"
            count = len(port_plan.endpoints)
            for index, endpoint in enumerate(port_plan.endpoints):
                remaining = count - index
                chance = (
                    f" -m statistic --mode random --probability {1 / remaining:.5f}"
                    if remaining > 1
                    else ""
                )
                nat.append(
                    f"-A {SERVICES_CHAIN} {match}{chance}"
                    f" -j DNAT --to-destination {endpoint.ip}:{endpoint.port}"
                )
    nat.append("COMMIT")
    filter_ = [
        "*filter",
        f":{SERVICES_CHAIN} - [0:0]",
        f"-F {SERVICES_CHAIN}",
        f"-A {SERVICES_CHAIN} -d {config.service_cidr} -j REJECT",
        "COMMIT",
    ]
    return "\n".join([*nat, *filter_, ""])


def render_service_jumps() -> str:
    """Created once per pod netns: OUTPUT jumps to the service chains (appended, so
    ztunnel's capture rules inserted ahead of them win)."""
    lines = []
    for table in ("nat", "filter"):
        lines += [
            f"*{table}",
            f":{SERVICES_CHAIN} - [0:0]",
            f"-A OUTPUT -j {SERVICES_CHAIN}",
            "COMMIT",
        ]
    return "\n".join([*lines, ""])


def render_hosts(pod: PodPlan | None, services: Iterable[ServicePlan]) -> str:
    """The hosts file of ``pod`` (or of a node when None): short names only in its namespace."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if pod is not None:
        lines.append(f"{pod.ip}\t{pod.spec.name}")
    for service in services:
        name, ns = service.spec.name, service.spec.namespace
        names = [f"{name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if pod is not None and pod.spec.namespace == ns:
            names.append(name)
        lines.append(f"{service.vip}\t{' '.join(names)}")
    return "\n".join([*lines, ""])


def must_recreate(running: PodPlan, wanted: PodPlan) -> bool:
    """Whether the pod must be recreated. Labels change in place, as on Kubernetes, and so
    does joining or leaving the mesh; any other change to the spec recreates the pod."""
    if not running.spec.same_spec(wanted.spec):
        return True
    placed = (running.node, running.ip, running.netns, running.veth, running.identity)
    return placed != (wanted.node, wanted.ip, wanted.netns, wanted.veth, wanted.identity)
