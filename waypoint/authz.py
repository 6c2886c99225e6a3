"""L7 authorization at the waypoint: Istio's AuthorizationPolicy on one HTTP request, pure.

``evaluate_request`` applies the policies the waypoint binds (:meth:`WaypointScope.binding`:
targetRefs to its Gateway, to the destination Service, or to its GatewayClass from the root
namespace; never a selector) in Istio's order:

1. a matching DENY policy denies (CUSTOM arrives here as a DENY of everything);
2. with no ALLOW policy bound, the request is allowed;
3. a matching ALLOW policy allows; otherwise the request is denied.

AUDIT decides nothing: every AUDIT policy whose rules match marks the request as audited
(:attr:`Decision.audited`), whatever the outcome. Rules are OR'd; inside a rule the sources,
the operations and the ``when`` conditions are AND'd with each other, sources OR'd among
themselves, operations too; a field's values are OR'd, a ``not`` field must match none.

Every string is matched with Istio's wildcards (exact, ``prefix*``, ``*suffix``, ``*``);
hosts case-insensitively against the authority as sent (``example.com`` does not match
``example.com:8080``); paths without their query. A ``when`` key this evaluator does not
know (or a value it cannot read, such as a bad CIDR) makes its condition false in an ALLOW
or AUDIT rule and true in a DENY rule, so it never widens access, and is reported in
:attr:`Decision.notes`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from mesh.authz import first_match
from mesh.authz_match import blocks_match, parse_ip, peer_matches, port_matches, strings_match
from mesh.model_policy import Authorization, Condition, Operation, Rule, Source
from waypoint.request import L7Request

# request.headers[x-user], request.auth.claims[groups][0]: a name, then [bracketed] parts.
_KEY = re.compile(r"^([a-z.]+?)((?:\[[^\[\]]+\])*)$")
_BRACKETS = re.compile(r"\[([^\[\]]+)\]")

_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")


@dataclass(frozen=True)
class Decision:
    """The outcome for one request. ``policy`` and ``rule`` (1-based) name what decided, if
    a rule did; ``reason`` says it in words; ``audited`` lists the AUDIT policies that matched
    (``ns/name rule N``); ``notes`` what could not be checked as written."""

    allowed: bool
    policy: str | None
    rule: int | None
    reason: str
    audited: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def details(self) -> str:
        """Envoy's response code details of a denial, as Istio's waypoint reports it
        (``rbac_access_denied_matched_policy[ns[N]-policy[P]-rule[I]]``, rule from 0)."""
        if self.allowed:
            return ""
        if self.policy is None or self.rule is None:
            return "rbac_access_denied_matched_policy[none]"
        namespace, _, name = self.policy.partition("/")
        return (
            f"rbac_access_denied_matched_policy[ns[{namespace}]-policy[{name}]"
            f"-rule[{self.rule - 1}]]"
        )


def bound_policies(
    request: L7Request, policies: Iterable[Authorization]
) -> list[tuple[Authorization, str]]:
    """The policies the waypoint applies to ``request``, by key, each with what binds it."""
    bound = []
    for p in policies:
        how = request.scope.binding(p.namespace, p.target_refs, request.dst_service)
        if how is not None:
            bound.append((p, how))
    return sorted(bound, key=lambda pair: pair[0].key)


def evaluate_request(request: L7Request, policies: Iterable[Authorization]) -> Decision:
    """Decide ``request`` against ``policies``; those the waypoint does not bind are ignored."""
    bound = bound_policies(request, policies)
    notes: list[str] = []
    audited = tuple(
        f"{p.key} rule {i}"
        for p, _ in bound
        if p.action == "AUDIT"
        for i, rule in enumerate(p.rules, start=1)
        if _rule_matches(rule, request, deny=False, notes=notes) is not None
    )

    def decided(allowed: bool, policy: str | None, rule: int | None, reason: str) -> Decision:
        return Decision(allowed, policy, rule, reason, audited, tuple(dict.fromkeys(notes)))

    for policy, how in bound:
        if policy.action != "DENY":
            continue
        for i, rule in enumerate(policy.rules, start=1):
            why = _rule_matches(rule, request, deny=True, notes=notes)
            if why is not None:
                reason = f"denied by DENY policy {policy.key} via {how} (rule {i}: {why})"
                return decided(False, policy.key, i, reason)
    allows = [(p, how) for p, how in bound if p.action == "ALLOW"]
    target = request.dst_service or f"port {request.dst_port}"
    if not allows:
        return decided(True, None, None, f"allowed: no ALLOW policy binds {target}")
    for policy, how in allows:
        for i, rule in enumerate(policy.rules, start=1):
            why = _rule_matches(rule, request, deny=False, notes=notes)
            if why is not None:
                reason = f"allowed by ALLOW policy {policy.key} via {how} (rule {i}: {why})"
                return decided(True, policy.key, i, reason)
    if len(allows) == 1:
        reason = f"the only ALLOW policy binding {target}, {allows[0][0].key}, did not match"
    else:
        names = ", ".join(p.key for p, _ in allows)
        reason = f"none of the {len(allows)} ALLOW policies binding {target} matched ({names})"
    return decided(False, None, None, reason)


def _rule_matches(
    rule: Rule,
    req: L7Request,
    *,
    deny: bool,
    notes: list[str],
    why_not: list[str] | None = None,
) -> str | None:
    """Why ``rule`` matches ``req``, in words, or None; given ``why_not``, a rule that does
    not match says there which condition failed."""
    parts: list[str] = []
    for label, items, match in (
        ("source", rule.sources, _source_matches),
        ("operation", rule.operations, _operation_matches),
    ):
        if not items:
            continue
        if why_not is None:
            found = _first(items, req, match)
            if found is None:
                return None
            n, met = found
        else:
            hit = first_match(label, items, partial(_with_request, match, req), why_not)
            if hit is None:
                return None
            n, met = 0, hit
        shown = f" {n}" if len(items) > 1 and n else ""
        parts.append(f"{label}{shown} ({', '.join(met) or 'any'})")
    for condition in rule.when:
        met_condition = _condition_matches(condition, req, deny=deny, notes=notes)
        if met_condition is None:
            if why_not is not None:
                values = attribute_or_none(condition.key, req)
                wanted = ", ".join(condition.values) or "anything"
                excluded = f", excluded [{', '.join(condition.not_values)}]" * bool(
                    condition.not_values
                )
                why_not.append(f"when {condition.key} is {values}, wanted [{wanted}]{excluded}")
            return None
        parts.append(f"when {met_condition}")
    return "; ".join(parts) or "matches every request"


def _with_request(
    match: Callable[..., list[str] | None], req: L7Request, item: Any, why_not: list[str]
) -> list[str] | None:
    return match(item, req, why_not)


def explain_rule(rule: Rule, request: L7Request, *, deny: bool) -> tuple[bool, str]:
    """Whether ``rule`` matches ``request``, and why or why not in words: the evaluator's
    own check (``ambit why``)."""
    why_not: list[str] = []
    found = _rule_matches(rule, request, deny=deny, notes=[], why_not=why_not)
    return (True, found) if found is not None else (False, "; ".join(why_not))


def attribute_or_none(key: str, req: L7Request) -> str:
    """A ``when`` key's values for ``req`` in words (for ``ambit why``)."""
    if key in _IP_KEYS:
        return {"source.ip": req.src_ip, "remote.ip": req.remote_ip or req.src_ip}.get(
            key, req.dst_ip
        ) or "absent"
    if key == "destination.port":
        return str(req.dst_port)
    try:
        values = attribute(key, req)
    except ValueError as exc:
        return f"unreadable ({exc})"
    return ", ".join(values) if values else "absent"


def _first(
    items: tuple[Source, ...] | tuple[Operation, ...],
    req: L7Request,
    match: Callable[[Any, L7Request], list[str] | None],
) -> tuple[int, list[str]] | None:
    """The first of ``items`` that matches (its number from 1) and what it met."""
    for n, item in enumerate(items, start=1):
        met = match(item, req)
        if met is not None:
            return n, met
    return None


def _source_matches(
    source: Source, req: L7Request, why_not: list[str] | None = None
) -> list[str] | None:
    met = peer_matches(source, req.src_identity, req.src_ip, why_not)
    if met is None:
        return None
    if source.request_principals or source.not_request_principals:
        found = strings_match(
            "request principal",
            req.auth.principal if req.auth else None,
            source.request_principals,
            source.not_request_principals,
            absent="none (no JWT)",
            why_not=why_not,
        )
        if found is None:
            return None
        met += found
    if source.remote_ip_blocks or source.not_remote_ip_blocks:
        remote = parse_ip(req.remote_ip or req.src_ip)
        found = blocks_match(
            "remote ip", remote, source.remote_ip_blocks, source.not_remote_ip_blocks, why_not
        )
        if found is None:
            return None
        met += found
    return met


def _operation_matches(
    op: Operation, req: L7Request, why_not: list[str] | None = None
) -> list[str] | None:
    met = port_matches(op, req.dst_port, why_not)
    if met is None:
        return None
    for label, value, positive, negative, fold in (
        ("host", req.host, op.hosts, op.not_hosts, True),
        ("method", req.method, op.methods, op.not_methods, False),
        ("path", req.url_path, op.paths, op.not_paths, False),
    ):
        if positive or negative:
            found = strings_match(label, value, positive, negative, fold_case=fold, why_not=why_not)
            if found is None:
                return None
            met += found
    return met


def _condition_matches(
    condition: Condition, req: L7Request, *, deny: bool, notes: list[str]
) -> str | None:
    """The condition as met, in words, or None. A key or value that cannot be read is met
    in a DENY rule and not met otherwise (noted either way)."""
    key = condition.key
    try:
        if key in _IP_KEYS:
            return _ip_condition(condition, req)
        if key == "destination.port":
            return _port_condition(condition, req.dst_port)
        values = attribute(key, req)
    except ValueError as exc:
        effect = "treated as met (DENY)" if deny else "never met"
        notes.append(f"when {key}: {exc}; {effect}")
        return f"{key} (unreadable, treated as met)" if deny else None
    found = _values_match(key, values, condition.values, condition.not_values)
    return None if found is None else ", ".join(found)


def attribute(key: str, req: L7Request) -> tuple[str, ...]:
    """The string values of a ``when`` key for ``req`` (() when absent); ValueError for a key
    Istio does not define or ambit does not support."""
    m = _KEY.match(key)
    if m is None:
        raise ValueError("not a condition key")
    name, rest = m.group(1), _BRACKETS.findall(m.group(2))
    auth = req.auth
    if name == "request.headers" and len(rest) == 1:
        value = req.header(rest[0])
        return () if value is None else (value,)
    if name == "request.auth.claims" and rest:
        return auth.claim(tuple(rest)) if auth else ()
    if rest:
        raise ValueError("not a condition key")
    identity = req.src_identity
    simple: dict[str, Callable[[], tuple[str, ...]]] = {
        "source.principal": lambda: (identity.principal,) if identity else (),
        "source.namespace": lambda: (identity.namespace,) if identity else (),
        "request.auth.principal": lambda: (auth.principal,) if auth else (),
        "request.auth.audiences": lambda: auth.audiences if auth else (),
        "request.auth.presenter": lambda: (p,) if auth and (p := auth.presenter) else (),
        "connection.sni": lambda: (req.sni,) if req.sni else (),
    }
    if name not in simple:
        raise ValueError("not a condition key ambit's waypoint supports")
    return simple[name]()


def _values_match(
    key: str, values: tuple[str, ...], positive: tuple[str, ...], negative: tuple[str, ...]
) -> list[str] | None:
    """One of ``values`` matches ``positive`` (if any) and none matches ``negative``."""
    if not values:
        return strings_match(key, None, positive, negative, absent="absent")
    if positive:
        hit = next((v for v in values if strings_match(key, v, positive, ()) is not None), None)
        if hit is None:
            return None
    else:
        hit = None
    if any(strings_match(key, v, (), negative) is None for v in values):
        return None
    met = [f"{key} {hit}"] if hit is not None else []
    if negative:
        met.append(f"{key} {', '.join(values)} not in [{', '.join(negative)}]")
    return met


def _ip_condition(condition: Condition, req: L7Request) -> str | None:
    key = condition.key
    text = {"source.ip": req.src_ip, "remote.ip": req.remote_ip or req.src_ip}.get(key, req.dst_ip)
    if not text:
        return None if condition.values else f"{key} absent"
    found = blocks_match(key, parse_ip(text), condition.values, condition.not_values)
    return None if found is None else ", ".join(found)


def _port_condition(condition: Condition, port: int) -> str | None:
    def ports(values: tuple[str, ...]) -> tuple[int, ...]:
        if not all(v.isdigit() for v in values):
            raise ValueError(f"a port is a number, not one of {list(values)}")
        return tuple(int(v) for v in values)

    positive, negative = ports(condition.values), ports(condition.not_values)
    if positive and port not in positive:
        return None
    if port in negative:
        return None
    return f"destination.port {port}"
