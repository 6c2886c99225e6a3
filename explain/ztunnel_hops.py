"""The hops ``ambit why`` takes at ztunnels: capture at the source, the outbound plan, and the
inbound check at the destination pod's ztunnel (PeerAuthentication, then
AuthorizationPolicy rule by rule). The decisions are ztunnel's own functions
(:func:`ztunnel.plan.plan_outbound`, :func:`ztunnel.inbound.inbound_decision`); the rule by
rule account comes from the evaluator's matcher (:func:`mesh.authz.explain_l4_rule`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from explain.query import From, To
from explain.steps import Check, Step
from mesh.authz import Decision, decide_l4, explain_l4_rule, peer_auth_mode
from mesh.identity import SpiffeId
from mesh.model import Authorization, Endpoint, MeshSnapshot, Service, Workload
from mesh.record import ConnectionRecord
from ztunnel.inbound import inbound_decision
from ztunnel.plan import Direct, Passthrough, Plan, Refused, ViaWaypoint, plan_outbound

Binding = Callable[[Service | Workload], str | None]
"""Which label on which object bound a Service or pod to its waypoint, in words (None:
not known; the CLI reads it from the objects)."""


def first(endpoints: Sequence[Endpoint]) -> Endpoint:
    """``ambit why`` follows the first endpoint (the proxies pick one per connection)."""
    return endpoints[0]


def capture(src: From) -> Step:
    w = src.workload
    if w is None and src.identity is not None:
        return Step(
            "source",
            "capture",
            "in the mesh",
            f"a caller with identity {src.identity} (service account {src.text}),"
            " captured by its node's ztunnel",
        )
    if w is None:
        return Step(
            "source",
            "capture",
            "outside the mesh",
            f"{src.ip} is no pod of the mesh: its connections arrive as plaintext",
        )
    if w.meshed:
        return Step(
            "source",
            "capture",
            "captured",
            f"pod {w.key} is in the mesh (ambient): {_ztunnel(w.node)} takes its"
            f" outbound connections and sends them over HBONE as {w.identity}",
        )
    return Step(
        "source",
        "capture",
        "not captured",
        f"pod {w.key} is not in the mesh (no ambient dataplane-mode on it or its"
        " namespace): its connections leave as plaintext, as if from outside",
    )


def outbound(snapshot: MeshSnapshot, src: From, to: To, binding: Binding) -> tuple[Step, Plan]:
    """The source ztunnel's plan for ``src`` -> ``to``, and the step saying it."""
    source = src.workload or _stand_in(src)
    plan = plan_outbound(snapshot, source, to.ip, to.port, pick=first)
    at = f"ztunnel {source.node} (outbound)" if source.node else "ztunnel (outbound)"
    if isinstance(plan, Refused):
        return Step(at, "plan", "refused", plan.detail), plan
    if isinstance(plan, ViaWaypoint):
        bound = plan.service if plan.service is not None else plan.dst_workload
        assert bound is not None
        assert bound.waypoint is not None
        what = f"service {bound.key}" if plan.service is not None else f"pod {bound.key}"
        how = binding(bound) or "its use-waypoint label"
        detail = (
            f"{what} is bound to waypoint {bound.waypoint} ({how}): HBONE to the"
            f" waypoint pod {plan.waypoint.key} at {plan.dial[0]}, expecting"
            f" {plan.expected_identity}, CONNECT {plan.authority}"
        )
        return Step(at, "plan", "via waypoint", detail), plan
    if isinstance(plan, Direct):
        via = f"service {plan.service.key} -> " if plan.service is not None else ""
        detail = (
            f"{via}pod {plan.dst_workload.key}: HBONE to {plan.dial[0]}:{plan.dial[1]},"
            f" expecting {plan.expected_identity}, CONNECT {plan.authority}"
        )
        if plan.service is not None and len(plan.service.endpoints) > 1:
            detail += f" (one of {len(plan.service.endpoints)} endpoints, picked per connection)"
        return Step(at, "plan", "direct", detail), plan
    assert isinstance(plan, Passthrough)
    pod = f" (pod {plan.dst_workload.key}, not in the mesh)" if plan.dst_workload else ""
    return Step(
        at,
        "plan",
        "passthrough",
        f"plain TCP to {plan.dial[0]}:{plan.dial[1]}{pod}: the mesh does not secure or check it",
    ), plan


def _ztunnel(node: str) -> str:
    return f"ztunnel on node {node}" if node else "its node's ztunnel"


def _stand_in(src: From) -> Workload:
    """A meshed caller known only by its service account: enough for the plan."""
    assert src.identity is not None
    i = src.identity
    return Workload(
        uid=f"why/{i.namespace}/{i.service_account}",
        name=i.service_account,
        namespace=i.namespace,
        service_account=i.service_account,
        node="",
        ip=src.ip,
        labels=(),
        protocol="HBONE",
        trust_domain=i.trust_domain,
    )


def l4_checks(
    policies: Sequence[Authorization], identity: SpiffeId | None, ip: str, port: int
) -> tuple[Check, ...]:
    """Each rule of ``policies`` (DENY first, then ALLOW, as evaluated) at L4."""
    out: list[Check] = []
    for action in ("DENY", "ALLOW"):
        for p in sorted((p for p in policies if p.action == action), key=lambda p: p.key):
            if not p.rules:
                out.append(
                    Check(f"{action} policy {p.key}", False, "has no rules: matches nothing")
                )
            for i, rule in enumerate(p.rules, start=1):
                name = f"{action} policy {p.key} rule {i}"
                if rule.l7 and action == "ALLOW":
                    out.append(
                        Check(
                            name,
                            False,
                            f"names L7 fields ({', '.join(rule.l7)}),"
                            " which ztunnel cannot see: never matches here",
                        )
                    )
                    continue
                matched, words = explain_l4_rule(rule, identity, ip, port)
                if rule.l7 and matched:
                    words += f"; its L7 fields ({', '.join(rule.l7)}) are not checked at L4"
                out.append(Check(name, matched, words))
    return tuple(out)


def inbound(
    snapshot: MeshSnapshot,
    dst: Workload,
    target_port: int,
    identity: SpiffeId | None,
    src_ip: str,
) -> tuple[list[Step], Decision]:
    """The destination ztunnel's check of a connection from ``identity`` (None: plaintext)
    at ``src_ip`` to ``dst``'s ``target_port``."""
    at = f"{_ztunnel(dst.node)} (inbound to {dst.key})"
    mode = peer_auth_mode(snapshot, dst)
    steps = []
    if identity is None:
        verdict = "refused" if mode == "STRICT" else "accepted"
        steps.append(
            Step(at, "peer authentication", verdict, f"mTLS mode {mode}: plaintext is {verdict}")
        )
        if mode == "STRICT":
            return steps, Decision(False, None, "PeerAuthentication STRICT refuses plaintext")
    else:
        steps.append(
            Step(
                at,
                "peer authentication",
                "mutual TLS",
                f"mTLS mode {mode}; the peer proved {identity}",
            )
        )
    record = ConnectionRecord(
        "inbound",
        (src_ip, 0),
        (dst.ip, target_port),
        src_identity=identity,
        dst_workload=dst,
        mtls=identity is not None,
    )
    decision = inbound_decision(snapshot, record)
    checks = l4_checks(snapshot.policies_for(dst), identity, src_ip, target_port)
    steps.append(
        Step(
            at,
            "authorization",
            "allowed" if decision.allowed else "denied",
            decision.reason,
            checks,
        )
    )
    return steps, decision


def waypoint_l4(
    policies: Sequence[Authorization], identity: SpiffeId | None, ip: str, port: int, target: str
) -> tuple[Decision, tuple[Check, ...]]:
    """The waypoint's check of traffic that is not HTTP (its policies' L4 part)."""
    decision = decide_l4(policies, identity, ip, port, target, enforcer="the waypoint")
    return decision, l4_checks(policies, identity, ip, port)
