"""``ambit why FROM TO``: the path one connection or request takes through the mesh, each
proxy's decision on it in the order they take them, and what the client sees.

:func:`why` follows the proxies' own decisions over one snapshot: capture at the source,
the source ztunnel's plan (refused, passthrough, straight to a pod, or through a
waypoint), at a waypoint its gate and route table, and the destination ztunnel's check
(PeerAuthentication, AuthorizationPolicy). Where a proxy picks one of several endpoints
it follows the first, and says so. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import replace

from explain.query import Ask, From, To
from explain.steps import Explanation, Step, Verdict
from explain.waypoint_hop import Onward, host_of, through_waypoint
from explain.ztunnel_hops import Binding, capture, inbound, outbound
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot, Workload
from waypoint.destination import meshed_identity
from waypoint.http_request import split_authority
from waypoint.protocol import declared
from waypoint.upstream import targets_of
from ztunnel.plan import Direct, Passthrough, Refused, ViaWaypoint, plan_outbound

APP_ANSWERS = "the app answers"


def why(
    snapshot: MeshSnapshot,
    src: From,
    to: To,
    ask: Ask,
    binding: Binding = lambda _: None,
) -> Explanation:
    if not ask.method:  # as a client would send it: gRPC is POST
        port = to.service.port(to.port) if to.service is not None else None
        ask = replace(ask, method="POST" if declared(port) == "grpc" else "GET")
    steps = [capture(src)]
    if src.meshed:
        verdict = _meshed(snapshot, src, to, ask, binding, steps)
    else:
        verdict = _plaintext(snapshot, src, to, ask, binding, steps)
    request = None
    if not ask.tcp:
        request = {
            "method": ask.method,
            "path": ask.path,
            "host": host_of(to, ask),
            "headers": [list(h) for h in ask.headers if h[0].lower() != "host"],
        }
    return Explanation(src.text, f"{to.text} ({to.ip}:{to.port})", request, tuple(steps), verdict)


def _meshed(
    snapshot: MeshSnapshot, src: From, to: To, ask: Ask, binding: Binding, steps: list[Step]
) -> Verdict:
    step, plan = outbound(snapshot, src, to, binding)
    steps.append(step)
    if isinstance(plan, Refused):
        return Verdict(
            False,
            None,
            plan.reason.flag,
            "the source ztunnel closes the connection at once: " + plan.detail,
        )
    if isinstance(plan, Passthrough):
        return Verdict(True, None, "-", "plain TCP, outside the mesh's checks: " + APP_ANSWERS)
    if isinstance(plan, Direct):
        port = split_authority(plan.authority)[1] or to.port
        found, decision = inbound(snapshot, plan.dst_workload, port, src.identity, src.ip)
        steps += found
        if not decision.allowed:
            return Verdict(
                False,
                None,
                "DENY",
                "the destination's ztunnel refuses the"
                " connection (the client sees it closed): " + decision.reason,
            )
        return Verdict(True, None, "-", "mutual TLS end to end; " + APP_ANSWERS)
    return _waypoint(snapshot, plan, src.identity, src.ip, to, ask, steps)


def _plaintext(
    snapshot: MeshSnapshot, src: From, to: To, ask: Ask, binding: Binding, steps: list[Step]
) -> Verdict:
    """A caller outside the mesh: a Service's VIP is turned into one endpoint's address by
    the node (kube-proxy; local mode's DNAT), so no Service waypoint applies; the pod's
    ztunnel captures the connection as plaintext."""
    dst: Workload | None = to.workload
    port = to.port
    if to.service is not None:
        endpoints = [e for e in to.service.endpoints if e.target_for(to.port) is not None]
        if not endpoints:
            steps.append(
                Step(
                    "node",
                    "service",
                    "no endpoint",
                    f"service {to.service.key} has no endpoint for port {to.port}",
                )
            )
            return Verdict(False, None, "-", "nothing answers: the Service has no endpoint")
        target = endpoints[0].target_for(to.port)
        assert target is not None
        dst, port = snapshot.workload(endpoints[0].workload_uid), target
        steps.append(
            Step(
                "node",
                "service",
                "dnat",
                f"the node sends {to.service.key}'s VIP to endpoint"
                f" {endpoints[0].ip}:{port} (one of {len(endpoints)}); a Service's"
                " waypoint is not used for callers outside the mesh",
            )
        )
    if dst is None or not dst.meshed:
        what = f"pod {dst.key}" if dst is not None else to.ip
        steps.append(
            Step(
                "destination",
                "capture",
                "not in the mesh",
                f"{what} is not in the mesh: nothing of the mesh applies",
            )
        )
        return Verdict(True, None, "-", APP_ANSWERS)
    if dst.waypoint is not None:
        plan = plan_outbound(snapshot, dst, dst.ip, port)
        if isinstance(plan, ViaWaypoint):
            steps.append(
                Step(
                    f"ztunnel on node {dst.node or '?'} (inbound to {dst.key})",
                    "plan",
                    "via waypoint",
                    f"pod {dst.key} is bound to waypoint"
                    f" {dst.waypoint} ({binding(dst) or 'its use-waypoint label'}):"
                    " plaintext to it goes through the waypoint, never straight"
                    " to the app",
                )
            )
            pod_to = To(to.text, dst.ip, port, None, dst)
            return _waypoint(snapshot, plan, dst.identity, src.ip, pod_to, ask, steps)
    found, decision = inbound(snapshot, dst, port, None, src.ip)
    steps += found
    if not decision.allowed:
        return Verdict(
            False,
            None,
            "DENY",
            "the destination's ztunnel closes the plaintext connection: " + decision.reason,
        )
    return Verdict(True, None, "-", "plaintext (no identity); " + APP_ANSWERS)


def _waypoint(
    snapshot: MeshSnapshot,
    plan: ViaWaypoint,
    identity: SpiffeId | None,
    ip: str,
    to: To,
    ask: Ask,
    steps: list[Step],
) -> Verdict:
    bound = plan.service if plan.service is not None else plan.dst_workload
    assert bound is not None
    assert bound.waypoint is not None
    found, outcome = through_waypoint(snapshot, bound.waypoint, identity, ip, to, ask)
    steps += found
    if isinstance(outcome, Verdict):
        return outcome
    return _onward(snapshot, plan, outcome, to, ask, steps)


def _onward(
    snapshot: MeshSnapshot, plan: ViaWaypoint, onward: Onward, to: To, ask: Ask, steps: list[Step]
) -> Verdict:
    """From the waypoint, as itself, to an endpoint of the Service it chose (or the pod)."""
    at = f"waypoint {plan.waypoint.namespace}/{plan.waypoint.name} (upstream)"
    tcp = ask.tcp
    service = onward.service
    if service is not None:
        targets = targets_of(service.endpoints, onward.port, meshed_identity(snapshot))
        if not targets:
            steps.append(
                Step(
                    at,
                    "endpoint",
                    "none",
                    f"service {service.key} has no endpoint for port {onward.port}",
                )
            )
            if tcp:
                return Verdict(False, None, "-", "the waypoint closes the connection: no endpoint")
            return Verdict(False, 503, "UH", "no healthy upstream (503 UH)")
        first = targets[0]
        dst, port, meshed = snapshot.workload(first.uid), first.port, first.identity is not None
        steps.append(
            Step(
                at,
                "endpoint",
                "picked",
                f"endpoint {first.ip}:{first.port} of {service.key} (one of"
                f" {len(targets)}, by the Service's balancer)",
            )
        )
    else:
        dst, port = to.workload, to.port
        meshed = dst is not None and dst.meshed
    if dst is None or not meshed:
        steps.append(
            Step(
                at,
                "endpoint",
                "plain TCP",
                "the endpoint is not in the mesh: the waypoint dials it in plain TCP",
            )
        )
        return Verdict(True, None, "-", APP_ANSWERS)
    found, decision = inbound(snapshot, dst, port, plan.expected_identity, plan.dial[0])
    steps += found
    if not decision.allowed:
        if tcp:
            return Verdict(
                False,
                None,
                "-",
                "the destination's ztunnel refuses the waypoint;"
                " the client's connection closes: " + decision.reason,
            )
        return Verdict(
            False,
            503,
            "UF",
            "the destination's ztunnel refuses the waypoint, which"
            " answers 503 UF (upstream connection failure): " + decision.reason,
        )
    return Verdict(True, None, "-", "through the waypoint; " + APP_ANSWERS)
