"""The waypoint's L7 AuthorizationPolicy: which policies bind, Istio's order, every field."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.constants import SYSTEM_NAMESPACE
from mesh.identity import SpiffeId
from mesh.model import Authorization, Condition, Operation, Rule
from tests.builders import (
    allow,
    audit,
    class_ref,
    deny,
    identity,
    op,
    rule,
    service_ref,
    source,
    waypoint_ref,
)
from waypoint.authz import Decision, attribute, evaluate_request
from waypoint.request import L7Request, RequestAuth, WaypointScope

SCOPE = WaypointScope("default/waypoint", "istio-waypoint")
CLIENT = identity("default", "client")
P_CLIENT = "cluster.local/ns/default/sa/client"
GW = [waypoint_ref()]
ISS = "https://issuer.example"


def req(
    *,
    src: SpiffeId | None = CLIENT,
    src_ip: str = "10.0.0.99",
    service: str | None = "default/web",
    port: int = 80,
    method: str = "GET",
    path: str = "/",
    host: str = "web.default.svc.cluster.local",
    headers: dict[str, str] | None = None,
    claims: dict[str, Any] | None = None,
    remote_ip: str = "",
    scope: WaypointScope = SCOPE,
) -> L7Request:
    auth = None
    if claims is not None:
        auth = RequestAuth(f"{claims.get('iss', ISS)}/{claims.get('sub', 'alice')}", claims)
    return L7Request(
        scope=scope,
        src_identity=src,
        src_ip=src_ip,
        dst_service=service,
        dst_port=port,
        method=method,
        path=path,
        host=host,
        headers=tuple((headers or {}).items()),
        auth=auth,
        remote_ip=remote_ip,
    )


def allowed(policies: list[Authorization], request: L7Request | None = None) -> bool:
    return evaluate_request(request or req(), policies).allowed


def only(r: Rule) -> list[Authorization]:
    """One ALLOW policy on the waypoint with rule ``r``: allowed iff ``r`` matches."""
    return [allow("only", r, targets=GW)]


# --- which policies bind the waypoint --------------------------------------------------------


def test_no_policy_allows() -> None:
    assert evaluate_request(req(), []) == Decision(
        True, None, None, "allowed: no ALLOW policy binds default/web"
    )


@pytest.mark.parametrize(
    ("policy", "binds"),
    [
        (deny("gw", rule(), targets=[waypoint_ref()]), True),
        (deny("svc", rule(), targets=[service_ref("web")]), True),
        (deny("cls", rule(), namespace=SYSTEM_NAMESPACE, targets=[class_ref()]), True),
        (deny("other-gw", rule(), targets=[waypoint_ref("other")]), False),
        (deny("other-svc", rule(), targets=[service_ref("db")]), False),
        (deny("svc-elsewhere", rule(), namespace="shop", targets=[service_ref("web")]), False),
        (deny("gw-elsewhere", rule(), namespace="shop", targets=[waypoint_ref()]), False),
        (deny("cls-not-root", rule(), targets=[class_ref()]), False),
        (deny("other-cls", rule(), namespace=SYSTEM_NAMESPACE, targets=[class_ref("x")]), False),
        # Selector policies are ztunnel's, in the root namespace too; so is a bare AUDIT.
        (deny("selector", rule(), selector={"app": "web"}), False),
        (deny("namespace-wide", rule()), False),
        (deny("root", rule(), namespace=SYSTEM_NAMESPACE), False),
    ],
    ids=lambda v: v.name if isinstance(v, Authorization) else str(v),
)
def test_which_policies_bind(policy: Authorization, binds: bool) -> None:
    assert allowed([policy]) is not binds


def test_service_refs_bind_only_requests_to_that_service() -> None:
    policy = deny("svc", rule(), targets=[service_ref("web")])
    assert not allowed([policy], req(service="default/web"))
    assert allowed([policy], req(service="default/db"))
    assert allowed([policy], req(service=None))  # traffic to a workload, not the Service


def test_the_reason_names_what_binds() -> None:
    decision = evaluate_request(req(), [deny("svc", rule(), targets=[service_ref("web")])])
    assert decision.reason == (
        "denied by DENY policy default/svc via Service default/web (rule 1: matches every request)"
    )


# --- Istio's order ---------------------------------------------------------------------------


def test_deny_wins_over_a_matching_allow() -> None:
    policies = [allow("a", rule(), targets=GW), deny("d", rule(operations=[op(80)]), targets=GW)]
    decision = evaluate_request(req(), policies)
    assert (decision.allowed, decision.policy, decision.rule) == (False, "default/d", 1)
    assert decision.details == "rbac_access_denied_matched_policy[ns[default]-policy[d]-rule[0]]"


def test_a_deny_that_does_not_match_leaves_it_to_allow() -> None:
    policies = [deny("d", rule(operations=[op(9090)]), targets=GW)]
    assert allowed(policies)


def test_an_allow_policy_bound_but_not_matching_denies() -> None:
    policies = [allow("a", rule([source(principals=["cluster.local/ns/x/sa/y"])]), targets=GW)]
    decision = evaluate_request(req(), policies)
    assert decision == Decision(
        False,
        None,
        None,
        "the only ALLOW policy binding default/web, default/a, did not match",
    )
    assert decision.details == "rbac_access_denied_matched_policy[none]"


def test_one_allow_of_several_is_enough_and_says_which_rule() -> None:
    policies = [
        allow("a", rule(operations=[op(methods=["POST"])]), targets=GW),
        allow(
            "b",
            rule(operations=[op(methods=["PUT"])]),
            rule(operations=[op(methods=["GET"]), op(paths=["/x"])]),
            targets=GW,
        ),
    ]
    decision = evaluate_request(req(), policies)
    assert (decision.allowed, decision.policy, decision.rule) == (True, "default/b", 2)
    assert decision.reason == (
        "allowed by ALLOW policy default/b via Gateway default/waypoint"
        " (rule 2: operation 1 (method GET))"
    )


def test_an_allow_with_no_rules_allows_nothing() -> None:
    assert not allowed([allow("nothing", targets=GW)])


def test_audit_marks_without_deciding() -> None:
    policies = [
        audit("log-gets", rule(operations=[op(methods=["GET"])]), targets=GW),
        audit("log-posts", rule(operations=[op(methods=["POST"])]), targets=GW),
    ]
    decision = evaluate_request(req(), policies)
    assert decision.allowed
    assert decision.audited == ("default/log-gets rule 1",)
    denied = evaluate_request(req(), [*policies, deny("d", rule(), targets=GW)])
    assert not denied.allowed
    assert denied.audited == ("default/log-gets rule 1",)


def test_an_audit_alone_does_not_turn_on_deny_by_default() -> None:
    assert allowed([audit("a", rule(operations=[op(methods=["POST"])]), targets=GW)])


# --- sources ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "request_kw", "matches"),
    [
        ({"principals": [P_CLIENT]}, {}, True),
        ({"principals": ["cluster.local/ns/default/*"]}, {}, True),
        ({"principals": ["*/sa/client"]}, {}, True),
        ({"principals": ["*"]}, {"src": None}, False),
        ({"not_principals": [P_CLIENT]}, {}, False),
        ({"not_principals": [P_CLIENT]}, {"src": None}, True),
        ({"namespaces": ["default"]}, {}, True),
        ({"namespaces": ["shop"]}, {}, False),
        ({"not_namespaces": ["shop"]}, {}, True),
        ({"ip_blocks": ["10.0.0.0/24"]}, {}, True),
        ({"ip_blocks": ["10.1.0.0/16"]}, {}, False),
        ({"ip_blocks": ["10.0.0.99"]}, {"src_ip": "::ffff:10.0.0.99"}, True),
        ({"not_ip_blocks": ["10.0.0.0/24"]}, {}, False),
        ({"request_principals": ["*"]}, {"claims": {"sub": "alice"}}, True),
        ({"request_principals": ["*"]}, {}, False),
        ({"request_principals": [f"{ISS}/alice"]}, {"claims": {"sub": "alice"}}, True),
        ({"request_principals": [f"{ISS}/*"]}, {"claims": {"sub": "bob"}}, True),
        ({"request_principals": [f"{ISS}/alice"]}, {"claims": {"sub": "bob"}}, False),
        ({"not_request_principals": ["*"]}, {}, True),
        ({"not_request_principals": ["*"]}, {"claims": {"sub": "bob"}}, False),
        ({"remote_ip_blocks": ["192.0.2.0/24"]}, {"remote_ip": "192.0.2.7"}, True),
        ({"remote_ip_blocks": ["192.0.2.0/24"]}, {}, False),  # remote is the peer then
        ({"not_remote_ip_blocks": ["192.0.2.0/24"]}, {"remote_ip": "192.0.2.7"}, False),
        ({"principals": [P_CLIENT], "namespaces": ["shop"]}, {}, False),  # fields AND'd
    ],
)
def test_source_fields(fields: dict[str, list[str]], request_kw: Any, matches: bool) -> None:
    assert allowed(only(rule([source(**fields)])), req(**request_kw)) is matches


def test_sources_are_ored() -> None:
    r = rule([source(namespaces=["shop"]), source(principals=[P_CLIENT])])
    decision = evaluate_request(req(), only(r))
    assert decision.allowed
    assert decision.reason.endswith(f"(rule 1: source 2 (principal {P_CLIENT}))")


# --- operations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "request_kw", "matches"),
    [
        ({"paths": ["/api"]}, {"path": "/api"}, True),
        ({"paths": ["/api"]}, {"path": "/api/"}, False),
        ({"paths": ["/api/*"]}, {"path": "/api/v1/users"}, True),
        ({"paths": ["/api/*"]}, {"path": "/api"}, False),
        ({"paths": ["*.html"]}, {"path": "/site/index.html"}, True),
        ({"paths": ["*"]}, {"path": "/anything"}, True),
        ({"paths": ["/search"]}, {"path": "/search?q=x"}, True),  # the query is not the path
        ({"paths": ["/a"]}, {"path": "/a#frag"}, True),
        ({"not_paths": ["/admin/*"]}, {"path": "/admin/users"}, False),
        ({"not_paths": ["/admin/*"]}, {"path": "/public"}, True),
        ({"methods": ["GET", "HEAD"]}, {"method": "HEAD"}, True),
        ({"methods": ["GET"]}, {"method": "get"}, False),  # methods are case-sensitive
        ({"not_methods": ["DELETE"]}, {"method": "DELETE"}, False),
        (
            {"hosts": ["web.default.svc.cluster.local"]},
            {"host": "WEB.default.svc.cluster.local"},
            True,
        ),
        ({"hosts": ["*.example.com"]}, {"host": "api.Example.com"}, True),
        ({"hosts": ["api.example.com"]}, {"host": "api.example.com:8080"}, False),
        ({"hosts": ["api.example.com:*"]}, {"host": "api.example.com:8080"}, True),
        ({"not_hosts": ["*.internal"]}, {"host": "db.INTERNAL"}, False),
        ({"methods": ["GET"], "paths": ["/x"]}, {"path": "/y"}, False),  # fields AND'd
    ],
)
def test_operation_fields(fields: dict[str, list[Any]], request_kw: Any, matches: bool) -> None:
    operation = Operation(**{k: tuple(v) for k, v in fields.items()})
    assert allowed(only(rule(operations=[operation])), req(**request_kw)) is matches


@pytest.mark.parametrize(
    ("ports", "not_ports", "port", "matches"),
    [
        ((80,), (), 80, True),
        ((8080,), (), 80, False),
        ((), (80,), 80, False),
        ((), (81,), 80, True),
    ],
)
def test_ports(
    ports: tuple[int, ...], not_ports: tuple[int, ...], port: int, matches: bool
) -> None:
    policy = only(rule(operations=[op(*ports, not_ports=not_ports)]))
    assert allowed(policy, req(port=port)) is matches


def test_sources_and_operations_are_anded() -> None:
    r = rule([source(principals=[P_CLIENT])], [op(methods=["POST"])])
    assert not allowed(only(r))
    assert allowed(only(r), req(method="POST"))


# --- when ------------------------------------------------------------------------------------


def when(key: str, values: tuple[str, ...] = (), not_values: tuple[str, ...] = ()) -> Rule:
    return Rule(when=(Condition(key, values, not_values),))


CLAIMS = {
    "iss": ISS,
    "sub": "alice",
    "aud": ["web", "api"],
    "azp": "frontend",
    "groups": ["dev", "ops"],
    "realm": {"roles": ["admin"], "tier": "gold"},
    "admin": True,
}


@pytest.mark.parametrize(
    ("condition", "request_kw", "matches"),
    [
        (when("request.headers[x-user]", ("alice",)), {"headers": {"X-User": "alice"}}, True),
        (when("request.headers[X-User]", ("al*",)), {"headers": {"x-user": "alice"}}, True),
        (when("request.headers[x-user]", ("alice",)), {}, False),
        (when("request.headers[x-user]", not_values=("bob",)), {}, True),
        (
            when("request.headers[x-user]", not_values=("bob",)),
            {"headers": {"x-user": "bob"}},
            False,
        ),
        (when("source.principal", (P_CLIENT,)), {}, True),
        (when("source.principal", ("*",)), {"src": None}, False),
        (when("source.namespace", ("default",)), {}, True),
        (when("source.ip", ("10.0.0.0/8",)), {}, True),
        (when("source.ip", not_values=("10.0.0.99",)), {}, False),
        (when("remote.ip", ("192.0.2.1",)), {"remote_ip": "192.0.2.1"}, True),
        (when("destination.port", ("80", "443")), {}, True),
        (when("destination.port", not_values=("80",)), {}, False),
        (when("request.auth.principal", (f"{ISS}/alice",)), {"claims": CLAIMS}, True),
        (when("request.auth.principal", ("*",)), {}, False),
        (when("request.auth.audiences", ("api",)), {"claims": CLAIMS}, True),
        (when("request.auth.presenter", ("front*",)), {"claims": CLAIMS}, True),
        (when("request.auth.claims[groups]", ("ops",)), {"claims": CLAIMS}, True),
        (when("request.auth.claims[groups]", not_values=("ops",)), {"claims": CLAIMS}, False),
        (when("request.auth.claims[iss]", (ISS,)), {"claims": CLAIMS}, True),
        (when("request.auth.claims[realm][roles]", ("admin",)), {"claims": CLAIMS}, True),
        (when("request.auth.claims[realm][tier]", ("gold",)), {"claims": CLAIMS}, True),
        (when("request.auth.claims[realm][missing]", ("x",)), {"claims": CLAIMS}, False),
        (when("request.auth.claims[admin]", ("true",)), {"claims": CLAIMS}, False),  # not a string
        (when("request.auth.claims[groups]", ("dev",)), {}, False),  # no JWT
    ],
)
def test_when_conditions(condition: Rule, request_kw: Any, matches: bool) -> None:
    assert allowed(only(condition), req(**request_kw)) is matches


def test_every_condition_of_a_rule_must_hold() -> None:
    r = Rule(
        when=(
            Condition("request.headers[x-a]", ("1",)),
            Condition("request.headers[x-b]", ("2",)),
        )
    )
    assert not allowed(only(r), req(headers={"x-a": "1"}))
    assert allowed(only(r), req(headers={"x-a": "1", "x-b": "2"}))


def test_repeated_headers_are_joined_as_envoy_does() -> None:
    request = L7Request(
        SCOPE, CLIENT, "10.0.0.9", None, 80, "GET", "/", "h", (("x", "a"), ("X", "b"))
    )
    assert attribute("request.headers[x]", request) == ("a,b",)


@pytest.mark.parametrize(
    "key", ["experimental.envoy.filters.http.foo[bar]", "request.time", "source.ip[x]", "Bad Key"]
)
def test_an_unknown_key_never_widens_access(key: str) -> None:
    allow_decision = evaluate_request(req(), only(when(key, ("x",))))
    assert not allow_decision.allowed
    (note,) = allow_decision.notes
    assert note.startswith(f"when {key}: not a condition key")
    assert note.endswith("; never met")
    deny_decision = evaluate_request(req(), [deny("d", when(key, ("x",)), targets=GW)])
    assert not deny_decision.allowed
    assert deny_decision.notes[0].endswith("treated as met (DENY)")


def test_a_bad_cidr_in_a_condition_is_noted() -> None:
    decision = evaluate_request(req(), only(when("source.ip", ("10.0.0.0/33",))))
    assert not decision.allowed
    assert decision.notes
    assert decision.notes[0].startswith("when source.ip:")


def test_a_remote_ip_must_be_an_address() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        req(remote_ip="unknown")
