"""What Istio's security kinds mean in the mesh model, pure: an AuthorizationPolicy with
every value kept (CUSTOM failing closed), whether ztunnel enforces it as written (the
policy's ``ambit.io/ZtunnelAccepted`` condition), and PeerAuthentication. Used by
:class:`k8s.translate.Translator`, which re-exports them."""

from __future__ import annotations

from k8s import manifests as m
from mesh import model
from mesh.constants import SYSTEM_NAMESPACE
from mesh.model_policy import GATEWAY_GROUP


def peer_authentication(p: m.PeerAuthentication) -> model.PeerAuthentication:
    return model.PeerAuthentication(p.name, p.namespace, p.selector, p.mode)


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


def waypoint_acceptance(
    policy: m.AuthorizationPolicy | m.RequestAuthentication, snapshot: model.MeshSnapshot
) -> tuple[bool, str, str] | None:
    """Whether a waypoint enforces ``policy`` (one with targetRefs, or AUDIT, or any
    RequestAuthentication): ``(accepted, reason, message)`` of
    :data:`~mesh.constants.CONDITION_WAYPOINT_ACCEPTED`, Istio's ``WaypointAccepted``; None
    for a policy ztunnel alone enforces. Pure.

    - every targetRef binds a waypoint: True, ``Accepted``, "bound to NS/NAME" (a Gateway
      of a waypoint class, a Service bound to a waypoint, a GatewayClass named from the
      root namespace with a waypoint of that class);
    - otherwise False: ``TargetNotFound`` when a target does not exist (or is a kind ambit
      has none of), ``AncestorNotBound`` when it exists but no waypoint serves it (a
      Service without one, an AUDIT policy without targetRefs).
    """
    if not policy.target_refs:
        if isinstance(policy, m.RequestAuthentication):  # ztunnel checks no JWT
            return False, "AncestorNotBound", (
                "only a waypoint checks JWTs: give it targetRefs (the waypoint's Gateway, or"
                " a Service bound to a waypoint)"
            )  # fmt: skip
        if policy.action != "AUDIT":
            return None
        return False, "AncestorNotBound", "no waypoint takes a policy without targetRefs"
    bound: list[str] = []
    missing: list[str] = []
    unbound: list[str] = []
    for ref in policy.target_refs:
        key = f"{policy.namespace}/{ref.name}"
        if (ref.group, ref.kind) == (GATEWAY_GROUP, "Gateway"):
            (bound if snapshot.gateway(key) else missing).append(key)
        elif (ref.group, ref.kind) == ("", "Service"):
            service = snapshot.service(key)
            if service is None:
                missing.append(f"Service {key}")
            elif service.waypoint is None:
                unbound.append(f"Service {key} is not bound to a waypoint")
            else:
                bound.append(service.waypoint)
        elif (ref.group, ref.kind) == (GATEWAY_GROUP, "GatewayClass"):
            waypoints = [g.key for g in snapshot.gateways if g.gateway_class == ref.name]
            if policy.namespace != SYSTEM_NAMESPACE:
                unbound.append(f"GatewayClass {ref.name} binds only from {SYSTEM_NAMESPACE}")
            elif not waypoints:
                unbound.append(f"no waypoint of GatewayClass {ref.name}")
            else:
                bound += waypoints
        else:
            missing.append(f"{ref.kind} {key}")
    if missing:
        return False, "TargetNotFound", f"no such target: {', '.join(missing)}"
    if unbound:
        return False, "AncestorNotBound", "; ".join(unbound)
    return True, "Accepted", f"bound to {', '.join(dict.fromkeys(bound))}"


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
