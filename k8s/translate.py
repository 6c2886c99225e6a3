"""Kubernetes objects -> the mesh model. A pure function: objects in, MeshSnapshot out.

Owns the meaning of the objects for the mesh: which pods are workloads and which of
them are in the mesh (``ambit.io/dataplane-mode`` on the Namespace or the Pod), what
a Service's endpoints are (named targetPorts resolved per pod), and how Istio's
AuthorizationPolicy schema maps to L4 rules (fields ztunnel cannot enforce are
recorded in ``l7``, never dropped silently). Objects are already validated by
:mod:`k8s.manifests`; the only errors here are conflicts between objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from k8s import manifests as m
from k8s.endpoints import selects, target_port
from mesh import model
from mesh.constants import DEFAULT_TRUST_DOMAIN, LABEL_DATAPLANE_MODE


class TranslateError(ValueError):
    """Objects that are valid one by one contradict each other (two pods with one IP...)."""


def translate(
    objects: Iterable[m.K8sObject], *, trust_domain: str = DEFAULT_TRUST_DOMAIN, version: int
) -> model.MeshSnapshot:
    """The mesh as the given objects describe it, at ``version``.

    Pods become workloads once they have an IP (host-network and finished pods never do);
    Services need a selector and a cluster IP; policies keep their Istio meaning at L4.
    """
    objs = list(objects)
    namespaces = {o.name: o for o in objs if isinstance(o, m.Namespace)}
    pods = [
        p
        for p in objs
        if isinstance(p, m.Pod)
        and p.pod_ip
        and not p.host_network
        and p.phase not in ("Succeeded", "Failed")
    ]
    workloads = [_workload(p, namespaces.get(p.namespace), trust_domain) for p in pods]
    _check_unique("pod IP", {w.uid: w.ip for w in workloads})
    services = [
        _service(s, pods) for s in objs if isinstance(s, m.Service) and s.selector and s.cluster_ip
    ]
    _check_unique("service cluster IP", {s.key: s.vip for s in services})
    return model.MeshSnapshot(
        version=version,
        workloads=tuple(workloads),
        services=tuple(services),
        authorizations=tuple(
            authorization(a) for a in objs if isinstance(a, m.AuthorizationPolicy)
        ),
        peer_authentications=tuple(
            model.PeerAuthentication(p.name, p.namespace, p.selector, p.mode)
            for p in objs
            if isinstance(p, m.PeerAuthentication)
        ),
    )


def meshed_by_labels(
    pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str] | None
) -> bool:
    """Pod label ``none`` opts out, ``ambient`` opts in; otherwise the namespace's label
    decides. The one rule: translation and the local cluster both ask it."""
    pod_mode = pod_labels.get(LABEL_DATAPLANE_MODE)
    if pod_mode in ("none", "ambient"):
        return pod_mode == "ambient"
    return namespace_labels is not None and namespace_labels.get(LABEL_DATAPLANE_MODE) == "ambient"


def in_mesh(pod: m.Pod, namespace: m.Namespace | None) -> bool:
    return meshed_by_labels(
        dict(pod.labels), dict(namespace.labels) if namespace is not None else None
    )


def workload_uid(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _workload(pod: m.Pod, namespace: m.Namespace | None, trust_domain: str) -> model.Workload:
    assert pod.pod_ip is not None
    return model.Workload(
        uid=workload_uid(pod.namespace, pod.name),
        name=pod.name,
        namespace=pod.namespace,
        service_account=pod.service_account,
        node=pod.node_name,
        ip=pod.pod_ip,
        labels=pod.labels,
        protocol="HBONE" if in_mesh(pod, namespace) else "TCP",
        trust_domain=trust_domain,
        container_ports=pod.named_ports,
    )


def _check_unique(what: str, values: dict[str, str]) -> None:
    owner: dict[str, str] = {}
    for key, value in sorted(values.items()):
        if value in owner:
            raise TranslateError(
                f"{owner[value]} and {key} have the same {what} {value}; one of them is stale"
                " or the address allocator handed it out twice"
            )
        owner[value] = key


def _service(svc: m.Service, pods: list[m.Pod]) -> model.Service:
    assert svc.cluster_ip is not None
    ports = tuple(
        model.ServicePort(
            port=p.port,
            target_port=p.target_port if isinstance(p.target_port, int) else 0,
            name=p.name,
            protocol=p.protocol,
            target_port_name=p.target_port if isinstance(p.target_port, str) else "",
            app_protocol=p.app_protocol,
        )
        for p in svc.ports
    )
    endpoints = []
    for pod in pods:
        if not selects(svc.namespace, svc.selector, pod.namespace, dict(pod.labels)):
            continue
        named = dict(pod.named_ports)
        mapping = []
        for p in svc.ports:
            target = target_port(p.target_port, named)
            if target is not None:
                mapping.append((p.port, target))
        if mapping:
            assert pod.pod_ip is not None
            uid = workload_uid(pod.namespace, pod.name)
            endpoints.append(model.Endpoint(uid, pod.pod_ip, tuple(mapping)))
    return model.Service(svc.name, svc.namespace, svc.cluster_ip, ports, tuple(endpoints))


def authorization(policy: m.AuthorizationPolicy) -> model.Authorization:
    """One AuthorizationPolicy with every value kept; what only a waypoint can check is named
    by the rules' ``l7``, and a policy with targetRefs (or AUDIT) is for waypoints alone.

    CUSTOM hands the decision to an external authorizer, which ambit does not have. Leaving
    the policy out would let through what its author wanted checked, so it fails closed:
    it becomes a DENY of everything it selects (or of everything its waypoints serve)."""
    return model.Authorization(
        name=policy.name,
        namespace=policy.namespace,
        action="DENY" if policy.action == "CUSTOM" else policy.action,
        selector=policy.selector,
        rules=(model.Rule(),) if policy.action == "CUSTOM" else tuple(map(_rule, policy.rules)),
        target_refs=tuple(model.TargetRef(t.group, t.kind, t.name) for t in policy.target_refs),
    )


def ztunnel_acceptance(policy: m.AuthorizationPolicy) -> tuple[bool, str, str]:
    """Whether ztunnel enforces ``policy`` as written: ``(accepted, reason, message)`` of the
    condition :data:`~mesh.constants.CONDITION_ZTUNNEL_ACCEPTED` on the policy. Pure.

    - CUSTOM: False, ``UnsupportedValue``: no external authorizer, so it fails closed.
    - targetRefs or AUDIT: True, ``WaypointOnly``: ztunnel leaves it to waypoints.
    - rules naming L7 fields: False, ``L7AttributesIgnored``: an ALLOW rule matches nothing
      at ztunnel, a DENY rule is enforced on its L4 part alone; both deny more than asked.
    - otherwise True, ``Accepted``.
    """
    targets = ", ".join(f"{t.kind} {t.name}" for t in policy.target_refs)
    if policy.action == "CUSTOM":
        outcome = (
            f"the waypoint of {targets} will deny everything it serves"
            if targets
            else "it denies what it selects"
        )
        return (
            False,
            "UnsupportedValue",
            "CUSTOM needs an external authorizer, which ambit does not have"
            f" (provider {policy.provider}); {outcome}",
        )
    if targets:
        message = f"enforced by the waypoint of {targets}, not by ztunnel"
        entries = [t.name for t in policy.target_refs if t.kind == "ServiceEntry"]
        if entries:
            message += f"; ambit has no ServiceEntry, so {', '.join(entries)} binds nothing"
        return True, "WaypointOnly", message
    if policy.action == "AUDIT":
        return (
            True,
            "WaypointOnly",
            "AUDIT marks requests for an audit log, which only a waypoint sees; ztunnel"
            " ignores it, and no waypoint takes a policy without targetRefs",
        )
    with_l7 = [(i, r.l7) for i, r in enumerate(map(_rule, policy.rules), start=1) if r.l7]
    if not with_l7:
        return True, "Accepted", "enforced by ztunnel"
    fields = ", ".join(dict.fromkeys(f for _, named in with_l7 for f in named))
    numbers = ", ".join(str(i) for i, _ in with_l7)
    which = f"rule{'s' if len(with_l7) > 1 else ''} {numbers}"
    if policy.action == "ALLOW":
        effect = "an ALLOW rule naming them matches nothing at ztunnel"
    else:
        effect = "a DENY rule naming them is enforced on its L4 part alone (more restrictive)"
    return (
        False,
        "L7AttributesIgnored",
        f"ztunnel cannot check {fields} ({which}): {effect};"
        " only a waypoint (targetRefs) can enforce them",
    )


def _rule(rule: m.PolicyRule) -> model.Rule:
    """The rule with every value kept: ztunnel checks the L4 fields (the model names the rest
    in ``l7``), a waypoint will check them all."""
    return model.Rule(
        sources=tuple(
            model.Source(
                principals=s.principals,
                not_principals=s.not_principals,
                namespaces=s.namespaces,
                not_namespaces=s.not_namespaces,
                ip_blocks=s.ip_blocks,
                not_ip_blocks=s.not_ip_blocks,
                request_principals=s.request_principals,
                not_request_principals=s.not_request_principals,
                remote_ip_blocks=s.remote_ip_blocks,
                not_remote_ip_blocks=s.not_remote_ip_blocks,
            )
            for s in rule.sources
        ),
        operations=tuple(
            model.Operation(
                ports=op.ports,
                not_ports=op.not_ports,
                hosts=op.hosts,
                not_hosts=op.not_hosts,
                methods=op.methods,
                not_methods=op.not_methods,
                paths=op.paths,
                not_paths=op.not_paths,
            )
            for op in rule.operations
        ),
        when=tuple(model.Condition(c.key, c.values, c.not_values) for c in rule.when),
    )
