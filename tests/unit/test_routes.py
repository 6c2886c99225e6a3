"""The route table beyond the conformance suite: precedence and its tie-breaks, segment
prefixes and trailing slashes, attachment (ports, sectionName, consumer routes, GRPCRoute
over HTTPRoute), backends (weights, unresolved shares, no endpoint), refusals (regexes,
unsupported filters), timeouts, mirrors and CORS, all on model values."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh.model_l7 import (
    BackendRef,
    Cors,
    Filter,
    GrpcMatch,
    GrpcRoute,
    GrpcRule,
    HeaderMatch,
    HttpMatch,
    HttpRoute,
    HttpRule,
    Mirror,
    ParentRef,
)
from tests.route_builders import NS, echo_services
from waypoint.decisions import NO_ROUTE, Decision, Forward, LocalReply, NoRoutes, timeout_reply
from waypoint.http_request import HttpRequest
from waypoint.routes import RouteProblem, RouteTable, compile_routes

ECHO = ParentRef("", "Service", "echo")


def rule(*matches: HttpMatch, to: str = "echo-v1", ns: str = "", **more: object) -> HttpRule:
    """A rule sending to Service ``to`` (of namespace ``ns``, "" the route's) on port 80."""
    backends = (BackendRef(to, 80, namespace=ns),)
    return HttpRule(matches or (HttpMatch(),), backends=backends, **more)  # type: ignore[arg-type]


def route(name: str, *rules: HttpRule, created: str = "", namespace: str = NS,
          parents: tuple[ParentRef, ...] = (ECHO,)) -> HttpRoute:  # fmt: skip
    return HttpRoute(name, namespace, parents, rules=rules, created=created)


def build(*routes: HttpRoute | GrpcRoute, ready: bool = True) -> RouteTable:
    https = [r for r in routes if isinstance(r, HttpRoute)]
    grpcs = [r for r in routes if isinstance(r, GrpcRoute)]
    return compile_routes(echo_services(ready=ready), https, grpcs)


def go(
    table: RouteTable,
    path: str = "/",
    *,
    method: str = "GET",
    port: int = 80,
    source: str = NS,
    seed: int = 0,
    headers: dict[str, str] | None = None,
    **named: str,
) -> Decision:
    """``table``'s decision for a request to echo (port 80) from a client of ``source``."""
    sent = tuple({**(headers or {}), **named}.items())
    request = HttpRequest(method, path, "echo", sent)
    rng = random.Random(seed)
    return table.match(f"{NS}/echo", port, request, source_namespace=source, choose=rng.randrange)


def to(decision: Decision) -> str:
    if isinstance(decision, Forward):
        return decision.backend.service.partition("/")[2]
    if isinstance(decision, LocalReply):
        return f"{decision.status} {decision.flag}"
    return type(decision).__name__


# --- Paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "path", "matches"),
    [
        ("PathPrefix", "/v2", "/v2", True),
        ("PathPrefix", "/v2", "/v2/", True),
        ("PathPrefix", "/v2", "/v2/x", True),
        ("PathPrefix", "/v2", "/v2example", False),
        ("PathPrefix", "/v2", "/V2", False),  # case-sensitive
        ("PathPrefix", "/v2/", "/v2", True),  # a trailing slash in the prefix is ignored
        ("PathPrefix", "/v2/", "/v2/x", True),
        ("PathPrefix", "/v2/", "/v2x", False),
        ("PathPrefix", "/", "/anything", True),
        ("PathPrefix", "/a/b", "/a/b?q=/c", True),  # the query is not the path
        ("Exact", "/abc", "/abc", True),
        ("Exact", "/abc", "/abc/", False),
        ("Exact", "/abc", "/abcd", False),
        ("Exact", "/abc", "/abc?x=1", True),
        ("RegularExpression", "/v[0-9]+/.*", "/v12/items", True),
        ("RegularExpression", "/v[0-9]+", "/v12/items", False),  # fullmatch
    ],
)
def test_path_matching(kind: str, value: str, path: str, matches: bool) -> None:
    table = build(route("r", rule(HttpMatch(kind, value))))  # type: ignore[arg-type]
    assert (to(go(table, path)) == "echo-v1") is matches


# --- Precedence --------------------------------------------------------------------------


def test_precedence_follows_the_match_not_the_rule_order() -> None:
    table = build(
        route(
            "r",
            rule(HttpMatch("PathPrefix", "/"), to="echo-v1"),
            rule(HttpMatch("RegularExpression", "/a.*"), to="echo-v3"),
            rule(HttpMatch("PathPrefix", "/a"), to="echo-v2"),
            rule(HttpMatch("PathPrefix", "/a/b"), to="echo-v3"),
            rule(HttpMatch("Exact", "/a/b/c"), to="echo"),
            rule(HttpMatch("PathPrefix", "/m", method="POST"), to="echo-v1"),
            rule(HttpMatch("PathPrefix", "/m", (HeaderMatch("x", "1"), HeaderMatch("y", "1"))),
                 to="echo-v2"),
            rule(HttpMatch("PathPrefix", "/m", (HeaderMatch("x", "1"),),
                           (HeaderMatch("q", "1"),)), to="echo-v3"),
        )
    )  # fmt: skip
    assert to(go(table, "/a/b/c")) == "echo"  # Exact first
    assert to(go(table, "/a/b/c/d")) == "echo-v3"  # then the longest prefix
    assert to(go(table, "/a/x")) == "echo-v2"  # prefixes before a regular expression
    assert to(go(table, "/m", method="POST", x="1", y="1")) == "echo-v1"  # method first
    assert to(go(table, "/m?q=1", x="1", y="1")) == "echo-v2"  # then most headers
    assert to(go(table, "/m?q=1", x="1")) == "echo-v3"  # then query parameters
    assert to(go(table, "/m")) == "echo-v1"  # only the / prefix is left


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (("a", "2026-01-02T00:00:00Z"), ("b", "2026-01-01T00:00:00Z"), "b"),  # oldest
        (("b", "2026-01-01T00:00:00Z"), ("a", "2026-01-01T00:00:00Z"), "a"),  # then name
        (("a", ""), ("b", "2026-01-03T00:00:00Z"), "b"),  # unknown age is not old
    ],
)
def test_ties_between_routes(first: tuple[str, str], second: tuple[str, str], winner: str) -> None:
    targets = {"a": "echo-v1", "b": "echo-v2"}
    routes = [route(name, rule(to=targets[name]), created=created)
              for name, created in (first, second)]  # fmt: skip
    assert to(go(build(*routes))) == targets[winner]
    assert to(go(build(*reversed(routes)))) == targets[winner]


def test_ties_between_namespaces_use_namespace_slash_name() -> None:
    parent = ParentRef("", "Service", "echo", namespace=NS)
    # Both are consumer routes of the same namespace in a consumer's view: a-ns/z < b-ns/a.
    one = route("z", rule(to="echo-v1", ns=NS), namespace="a-ns", parents=(parent,))
    two = route("a", rule(to="echo-v2", ns=NS), namespace="a-ns", parents=(parent,))
    assert to(go(build(one, two), source="a-ns")) == "echo-v2"


def test_ties_within_a_route_go_to_the_first_rule() -> None:
    table = build(route("r", rule(HttpMatch("PathPrefix", "/x"), to="echo-v2"),
                        rule(HttpMatch("PathPrefix", "/x"), to="echo-v1")))  # fmt: skip
    assert to(go(table, "/x")) == "echo-v2"


def test_nothing_matches_404_nr_and_no_route_at_all_goes_to_the_service() -> None:
    table = build(route("r", rule(HttpMatch("Exact", "/only"))))
    assert go(table, "/other") == NO_ROUTE
    assert to(NO_ROUTE) == "404 NR"
    assert go(build(), "/other") == NoRoutes(f"{NS}/echo", 80)


# --- Attachment --------------------------------------------------------------------------


def test_a_parent_port_or_section_name_scopes_the_route() -> None:
    by_port = route("p", rule(to="echo-v1"), parents=(ParentRef("", "Service", "echo", port=80),))
    alt = ParentRef("", "Service", "echo", section_name="http-alt")
    by_name = route("s", rule(to="echo-v2"), parents=(alt,))
    table = build(by_port, by_name)
    assert to(go(table, port=80)) == "echo-v1"
    assert to(go(table, port=8080)) == "echo-v2"
    assert isinstance(go(table, port=443), NoRoutes)


def test_a_port_the_service_does_not_have_attaches_nothing() -> None:
    parent = ParentRef("", "Service", "echo", port=81)
    table = build(route("p", rule(), parents=(parent,)))
    assert isinstance(go(table), NoRoutes)
    assert table.problems == (
        RouteProblem(
            "HTTPRoute", f"{NS}/p", "NoMatchingParent",
            f"parent Service {NS}/echo has no port 81; the route does not apply to it", parent,
        ),
    )  # fmt: skip


def test_gateway_parents_and_unknown_services_attach_nothing() -> None:
    gateway = ParentRef("gateway.networking.k8s.io", "Gateway", "waypoint")
    table = build(route("g", rule(), parents=(gateway, ParentRef("", "Service", "gone"))))
    assert isinstance(go(table), NoRoutes)
    # A Gateway parent is the control plane's to report; a Service not in the mesh is one
    # problem, the same the control plane writes on the route.
    assert [(p.reason, p.message) for p in table.problems] == [
        ("NoMatchingParent", f"parent Service {NS}/gone not found; the route does"
         " not apply to it"),
    ]  # fmt: skip


def test_consumer_routes_replace_producer_routes_for_their_namespace_only() -> None:
    parent = ParentRef("", "Service", "echo", namespace=NS)
    producer = route("producer", rule(to="echo-v1"))
    consumer = route("consumer", rule(HttpMatch("Exact", "/c"), to="echo-v2", ns=NS),
                     namespace="shop", parents=(parent,))  # fmt: skip
    table = build(producer, consumer)
    assert to(go(table, "/c", source="shop")) == "echo-v2"
    assert go(table, "/", source="shop") == NO_ROUTE  # producer routes do not merge in
    assert to(go(table, "/c", source="other")) == "echo-v1"
    assert to(go(table, "/c", source="")) == "echo-v1"  # unknown client: producer routes


def test_grpc_routes_win_over_http_routes_on_one_port() -> None:
    grpc = GrpcRoute("rpc", NS, (ECHO,), rules=(GrpcRule(backends=(BackendRef("echo-v2", 80),)),))
    table = build(route("web", rule(to="echo-v1")), grpc)
    decision = go(table, "/pkg.Svc/Call")
    assert to(decision) == "echo-v2"
    assert isinstance(decision, Forward)
    assert decision.rule.kind == "GRPCRoute"
    assert [(p.route, p.reason) for p in table.problems] == [
        (f"{NS}/web", "Conflicted"), (f"{NS}/web", "Conflicted"), (f"{NS}/web", "Conflicted"),
        (f"{NS}/web", "Conflicted"), (f"{NS}/web", "Conflicted"),
    ]  # once per port of echo, each naming its port  # fmt: skip


def test_destination_is_the_service_vip_and_port_only() -> None:
    table = build()
    assert table.destination("10.96.0.10:80") == (f"{NS}/echo", 80)
    assert table.destination("10.96.0.10:81") is None
    assert table.destination("10.0.0.11:8080") is None  # a pod
    assert table.destination("echo:80") is None  # names are not addresses
    assert table.route("10.0.0.11:8080", HttpRequest("GET", "/")) == NoRoutes(None, 8080)


# --- gRPC --------------------------------------------------------------------------------


def test_grpc_precedence_service_then_method_then_headers() -> None:
    def r(name: str, match: GrpcMatch, backend: str) -> GrpcRoute:
        rules = (GrpcRule((match,), backends=(BackendRef(backend, 80),)),)
        return GrpcRoute(name, NS, (ECHO,), rules=rules)

    table = build(
        r("a", GrpcMatch(method="Call"), "echo-v1"),
        r("b", GrpcMatch(service="pkg.Svc"), "echo-v2"),
        r("c", GrpcMatch(service="pkg.Svc", headers=(HeaderMatch("x", "1"),)), "echo-v3"),
        r("d", GrpcMatch("RegularExpression", "p.*", "Ca.*"), "echo"),
    )
    assert to(go(table, "/pkg.Svc/Call")) == "echo-v2"  # 7 characters of service beat 3
    assert to(go(table, "/pkg.Svc/Call", x="1")) == "echo-v3"  # then headers
    assert to(go(table, "/pkg.Svc2/Call")) == "echo"  # 3 characters of service beat none
    assert to(go(table, "/other.Svc/Call")) == "echo-v1"
    assert go(table, "/other.Svc/Stop") == NO_ROUTE
    assert go(table, "/not-grpc") == NO_ROUTE


# --- Backends ----------------------------------------------------------------------------


def weighted(*backends: tuple[str, int], ready: bool = True, requests: int = 2000) -> Counter[str]:
    refs = tuple(BackendRef(name, 80, weight=w) for name, w in backends)
    table = build(route("w", HttpRule(backends=refs)), ready=ready)
    return Counter(to(go(table, seed=seed)) for seed in range(requests))


def test_weight_zero_is_never_chosen_and_uneven_splits_hold() -> None:
    seen = weighted(("echo-v1", 1), ("echo-v2", 0), ("echo-v3", 3))
    assert "echo-v2" not in seen
    assert abs(seen["echo-v3"] / 2000 - 0.75) < 0.05


def test_all_weights_zero_or_no_backend_answer_500() -> None:
    assert weighted(("echo-v1", 0), ("echo-v2", 0), requests=5) == Counter({"500 -": 5})
    table = build(route("none", HttpRule()))
    decision = go(table)
    assert isinstance(decision, LocalReply)
    assert decision.reason == "no_backend"


def test_an_unresolved_backend_gets_500_for_its_share() -> None:
    seen = weighted(("echo-v1", 1), ("missing", 1), ("echo-v2", 2))
    assert abs(seen["500 -"] / 2000 - 0.25) < 0.05
    refs = (BackendRef("echo-v1", 81), BackendRef("x", 80, "example.com", "Thing"))
    decision = go(build(route("bad-port", HttpRule(backends=refs[:1]))))
    assert isinstance(decision, LocalReply)
    assert decision.reason == "backend_not_found"
    assert to(go(build(route("bad-kind", HttpRule(backends=refs[1:]))))) == "500 -"


def test_a_backend_without_endpoints_gets_503_uh() -> None:
    decision = go(build(route("r", rule()), ready=False))
    assert isinstance(decision, LocalReply)
    assert (decision.status, decision.flag, decision.reason) == (503, "UH", "no_healthy_endpoint")


# --- Refusals, timeouts, mirrors, CORS ---------------------------------------------------


def test_a_route_with_a_refused_regex_is_left_out_whole() -> None:
    bad = route("bad", rule(HttpMatch("RegularExpression", "/(a+)+$"), to="echo-v2"),
                rule(HttpMatch("Exact", "/fine"), to="echo-v2"))  # fmt: skip
    table = build(bad, route("good", rule(to="echo-v1")))
    assert to(go(table, "/fine")) == "echo-v1"
    (problem,) = table.problems
    assert (problem.route, problem.reason) == (f"{NS}/bad", "UnsupportedValue")
    assert "nested unbounded repetition" in problem.message


def test_a_rule_with_an_unsupported_filter_answers_500() -> None:
    ext = (Filter("ExternalAuth"),)
    table = build(route("r", rule(HttpMatch("Exact", "/a"), filters=ext),
                        HttpRule(backends=(BackendRef("echo-v1", 80, filters=ext),))))  # fmt: skip
    assert [to(go(table, p)) for p in ("/a", "/b")] == ["500 -", "500 -"]


def test_timeouts_ride_on_the_decision() -> None:
    table = build(route("r", rule(timeout_ms=0, backend_timeout_ms=None)))
    decision = go(table)
    assert isinstance(decision, Forward)
    assert (decision.timeout_ms, decision.backend_timeout_ms) == (0, None)
    reply = timeout_reply(decision.rule)
    assert (reply.status, reply.flag) == (504, "UT")


def test_mirrors_take_their_fraction_and_unresolved_ones_are_dropped() -> None:
    mirrors = (
        Filter("RequestMirror", mirror=Mirror(BackendRef("echo-v2", 80), 25, 100)),
        Filter("RequestMirror", mirror=Mirror(BackendRef("missing", 80))),
        Filter("RequestMirror", mirror=Mirror(BackendRef("echo-v3", 80), 0, 100)),
    )
    table = build(route("r", rule(filters=mirrors)))
    seen: Counter[str] = Counter()
    for seed in range(2000):
        decision = go(table, seed=seed)
        assert isinstance(decision, Forward)
        seen.update(m.service for m in decision.mirrors)
    assert set(seen) == {f"{NS}/echo-v2"}
    assert abs(seen[f"{NS}/echo-v2"] / 2000 - 0.25) < 0.05


def test_cors_answers_preflights_and_marks_responses() -> None:
    cors = Cors(("https://*.bar.com",), True, ("GET",), ("x-a",), ("x-b",), 60)
    table = build(route("r", rule(filters=(Filter("CORS", cors=cors),))))
    origin = {"origin": "https://www.bar.com"}
    asked = {**origin, "access-control-request-method": "GET"}
    pre = go(table, method="OPTIONS", headers=asked)
    assert isinstance(pre, LocalReply)
    assert (pre.status, pre.reason) == (204, "cors_preflight")
    assert dict(pre.headers)["access-control-allow-origin"] == "https://www.bar.com"
    actual = go(table, headers=origin)
    assert isinstance(actual, Forward)
    assert dict(actual.response_headers((("x-b", "1"),))) == {
        "x-b": "1",
        "access-control-allow-origin": "https://www.bar.com",
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "x-b",
        "vary": "origin",
    }
    assert to(go(table, method="OPTIONS")) == "echo-v1"  # not a preflight: forwarded
