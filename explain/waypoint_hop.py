"""The hop ``ambit why`` takes at a waypoint, in the waypoint's order: the protocol of the
port, RequestAuthentication, AuthorizationPolicy rule by rule, then the route table entry by
entry (the Gateway API's precedence) and the backend. Decisions are the waypoint's own
functions (:func:`waypoint.authz.evaluate_request`, :meth:`waypoint.routes.RouteTable.match`);
the accounts of the rules and matches that did not apply come from their matchers
(:func:`waypoint.authz.explain_rule`, ``mismatch``), and the rules that also match but rank
after the one chosen from :mod:`explain.shadowed`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from explain.query import Ask, To
from explain.shadowed import shadowed
from explain.steps import Check, Step, Verdict
from explain.ztunnel_hops import waypoint_l4
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot, Service
from mesh.model_l7 import JwtRule
from waypoint.authz import bound_policies, evaluate_request, explain_rule
from waypoint.decisions import Forward, LocalReply, NoRoutes, RedirectTo
from waypoint.http_request import HttpRequest
from waypoint.http_target import TargetError, read_target
from waypoint.jwt import UNCHECKED, KeySet, Provider, authenticate, inline_keys, providers_for
from waypoint.protocol import declared
from waypoint.request import L7Request, RequestAuth, WaypointScope
from waypoint.routes import compile_snapshot


@dataclass(frozen=True)
class Onward:
    """The waypoint sends the request on to ``service``'s ``port`` (None: to the pod the
    client addressed)."""

    service: Service | None
    port: int


def host_of(to: To, ask: Ask) -> str:
    """The authority a client such as curl sends: the Host header given, else the Service's
    name as local mode's hosts file has it (or the address), with a port that is not 80."""
    given = next((v for k, v in ask.headers if k.lower() == "host"), None)
    if given is not None:
        return given
    name = f"{to.service.name}.{to.service.namespace}" if to.service else to.ip
    return name if to.port == 80 else f"{name}:{to.port}"


def through_waypoint(
    snapshot: MeshSnapshot,
    key: str,
    identity: SpiffeId | None,
    ip: str,
    to: To,
    ask: Ask,
) -> tuple[list[Step], Verdict | Onward]:
    """What waypoint ``key`` does with a connection (or request) from ``identity`` at ``ip``
    to ``to``: a verdict of its own, or where it sends it on."""
    at = f"waypoint {key}"
    scope = WaypointScope(key)
    service = to.service
    protocol = declared(service.port(to.port)) if service is not None else None
    steps: list[Step] = []
    target = service.key if service is not None else None
    if ask.tcp or protocol == "tcp":
        why = "the port declares TCP" if protocol == "tcp" else "asked for plain TCP (--tcp)"
        view = L7Request(scope, identity, ip, target, to.port, "", "", "")
        bound = [p for p, _ in bound_policies(view, snapshot.authorizations)]
        decision, checks = waypoint_l4(bound, identity, ip, to.port, target or to.text)
        steps.append(Step(at, "protocol", "tcp", f"{why}: relayed as TCP, L4 policy only"))
        steps.append(
            Step(
                at,
                "authorization",
                "allowed" if decision.allowed else "denied",
                decision.reason,
                checks,
            )
        )
        if not decision.allowed:
            return steps, Verdict(
                False, None, "-", "the waypoint closes the connection: " + decision.reason
            )
        return steps, Onward(service, to.port)
    shown = protocol or "undeclared (sniffed; taken as HTTP here: --tcp for plain TCP)"
    steps.append(Step(at, "protocol", protocol or "http", f"port {to.port}: {shown}"))
    read = _as_read(ask, at)
    if isinstance(read, Step):
        steps.append(read)
        return steps, Verdict(False, 400, "DPE", f"the waypoint answers 400: {read.detail}")
    if read.path != ask.path:
        steps.append(Step(at, "path", "normalized", f"{ask.path} is read as {read.path}, as"
                          " the waypoint reads it before policy and routes"))  # fmt: skip
    ask = read
    host = host_of(to, ask)
    headers = tuple((k.lower(), v) for k, v in ask.headers if k.lower() != "host")
    request = L7Request(scope, identity, ip, target, to.port, ask.method, ask.path, host, headers)
    authentications = [r for r in snapshot.request_authentications if r.target_refs]
    providers = providers_for(authentications, scope, target)
    if providers:
        result = authenticate(providers, headers, ask.path, _keys)
        if result.failure is not None:
            steps.append(Step(at, "request authentication", "refused", result.reason))
            return steps, Verdict(False, result.failure.status, "-", result.reason)
        steps.append(Step(at, "request authentication", "passed",
                          result.reason + _unchecked(providers, result.auth)))  # fmt: skip
        if result.auth is not None:
            request = L7Request(
                scope,
                identity,
                ip,
                target,
                to.port,
                ask.method,
                ask.path,
                host,
                headers,
                result.auth,
            )
    policies = [p for p in snapshot.authorizations if p.target_refs]
    l7 = evaluate_request(request, policies)
    found: list[Check] = []
    for action in ("DENY", "ALLOW", "AUDIT"):
        for policy, how in bound_policies(request, policies):
            if policy.action != action:
                continue
            if not policy.rules:
                found.append(
                    Check(
                        f"{action} policy {policy.key} (via {how})",
                        False,
                        "has no rules: matches nothing",
                    )
                )
            for i, rule in enumerate(policy.rules, start=1):
                matched, words = explain_rule(rule, request, deny=action == "DENY")
                found.append(
                    Check(f"{action} policy {policy.key} rule {i} (via {how})", matched, words)
                )
    notes = f" ({'; '.join(l7.notes)})" if l7.notes else ""
    steps.append(
        Step(
            at,
            "authorization",
            "allowed" if l7.allowed else "denied",
            l7.reason + notes,
            tuple(found),
        )
    )
    if not l7.allowed:
        return steps, Verdict(False, 403, "-", "RBAC: access denied (" + l7.reason + ")")
    if service is None:
        steps.append(
            Step(
                at,
                "route",
                "no routes",
                f"addressed to pod {to.text}: no Service's"
                " routes apply (Gateway API's MeshFrontend)",
            )
        )
        return steps, Onward(None, to.port)
    route_step, outcome = _route(snapshot, service, to.port, ask, host, headers, identity, at)
    steps.append(route_step)
    if isinstance(outcome, Onward) and outcome.service is not None:
        steps += _traffic_notes(snapshot, outcome.service, at)
    return steps, outcome


def _as_read(ask: Ask, at: str) -> Ask | Step:
    """``ask`` with its path as the waypoint reads a request target (dot segments removed,
    unreserved characters decoded: :func:`waypoint.http_target.read_target`), or the step
    of a target it refuses."""
    try:
        path, _ = read_target(ask.method.encode("latin-1"), ask.path.encode("latin-1"))
    except (TargetError, UnicodeEncodeError) as exc:
        return Step(at, "request", "refused", str(exc))
    return replace(ask, path=path.decode("latin-1"))


def _route(
    snapshot: MeshSnapshot,
    service: Service,
    port: int,
    ask: Ask,
    host: str,
    headers: tuple[tuple[str, str], ...],
    identity: SpiffeId | None,
    at: str,
) -> tuple[Step, Verdict | Onward]:
    table = compile_snapshot(snapshot)
    request = HttpRequest(ask.method, ask.path, host, headers)
    source_namespace = identity.namespace if identity is not None else ""
    decision = table.match(
        service.key, port, request, source_namespace=source_namespace, choose=lambda total: 0
    )
    if isinstance(decision, NoRoutes):
        return Step(
            at,
            "route",
            "no routes",
            f"no HTTPRoute or GRPCRoute is attached to {service.key} port {port}: the"
            " request goes to the Service's own endpoints",
        ), Onward(service, port)
    checks = []
    for entry in table.entries(service.key, port, source_namespace):
        rule = entry.rule
        name = f"{rule.kind} {rule.route} rule {rule.index}"
        name += f" ({rule.name})" if rule.name else ""
        name += f" match {entry.order[4]}"
        why_not = entry.matcher.mismatch(request)
        if why_not is not None:
            checks.append(Check(name, False, why_not))
            continue
        checks.append(Check(name, True, entry.matcher.describe()))
        break
    checks_t = tuple(checks)
    also = shadowed(snapshot, table.entries(service.key, port, source_namespace), request)
    if isinstance(decision, LocalReply):
        if decision.flag == "NR":
            return Step(
                at,
                "route",
                "no match",
                f"none of the {len(checks)} route matches of"
                f" {service.key} port {port} matches: 404 NR",
                checks_t,
            ), Verdict(False, 404, "NR", "no route matches the request (404 NR)")
        words = f"the rule answers {decision.status} ({decision.reason.replace('_', ' ')})"
        return Step(at, "route", "local reply", words, checks_t, also), Verdict(
            decision.status < 400, decision.status, decision.flag, words
        )
    if isinstance(decision, RedirectTo):
        words = f"the rule redirects: {decision.status} to {decision.location}"
        return Step(at, "route", "redirect", words, checks_t, also), Verdict(
            True, decision.status, "-", words
        )
    assert isinstance(decision, Forward)
    rule = decision.rule
    total = sum(b.weight for b in rule.backends) or 1
    shares = ", ".join(
        f"{b.service or '(not a Service)'}:{b.port} {100 * b.weight / total:.0f}%"
        + ("" if b.resolved else " (not found: 500)")
        + ("" if b.ready or not b.resolved else " (no endpoint: 503 UH)")
        for b in rule.backends
    )
    words = f"backends by weight: {shares}; followed: {decision.backend.service}"
    if rule.retry is not None:
        words += f"; retry {rule.retry}"
    timeouts = [
        f"{n} {ms} ms"
        for n, ms in (("request", rule.timeout_ms), ("backendRequest", rule.backend_timeout_ms))
        if ms
    ]
    if timeouts:
        words += f"; timeouts {', '.join(timeouts)} (504 UT past them)"
    for ref in rule.filters.extensions + decision.backend.filters.extensions:
        words += f"; filter {ref.kind} {ref.name}"
    if decision.request is not request:
        words += f"; sent as {decision.request.method} {decision.request.path}"
    backend = decision.backend
    onward_service = snapshot.service(backend.service)
    step = Step(at, "route", "matched", words, checks_t, also)
    if onward_service is None:
        return step, Verdict(False, 500, "-", f"backend {backend.service} not found")
    return step, Onward(onward_service, backend.port)


def _traffic_notes(snapshot: MeshSnapshot, service: Service, at: str) -> list[Step]:
    """The DestinationRule and BackendTrafficPolicy that shape traffic to ``service``."""
    out = []
    rule = snapshot.destination_rule(service.key)
    if rule is not None:
        out.append(
            Step(
                at,
                "destination rule",
                rule.key,
                f"DestinationRule {rule.key} applies to {service.key}",
            )
        )
    policy = snapshot.backend_traffic_policy(service.key)
    if policy is not None:
        out.append(
            Step(
                at,
                "traffic policy",
                policy.key,
                f"BackendTrafficPolicy {policy.key} sets the retry budget of {service.key}",
            )
        )
    return out


def _keys(rule: JwtRule) -> KeySet | None:
    """A rule's inline keys; a ``jwksUri``'s set, which only the waypoint fetches, is not
    checked here (the token's claims are)."""
    if rule.jwks:
        return inline_keys(rule)
    return UNCHECKED if rule.jwks_uri else None


def _unchecked(providers: tuple[Provider, ...], auth: RequestAuth | None) -> str:
    """Words for a token accepted without its signature checked (its issuer's keys come
    from a ``jwksUri``)."""
    if auth is None:
        return ""
    for p in providers:
        if auth.principal.startswith(p.rule.issuer + "/") and not p.rule.jwks:
            return (f"; its signature is not checked here: the keys come from"
                    f" {p.rule.jwks_uri}, which only the waypoint fetches")  # fmt: skip
    return ""
