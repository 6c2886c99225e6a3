"""``ambit why`` names the route rules that also match a request but rank after the one the
waypoint chose, each with the place of Gateway API's order it lost on, in text (a line under
the matched entry) and JSON (the route step's ``shadowed``); nothing when no other rule
matches."""

from __future__ import annotations

import json
from typing import Any

import pytest

from explain.render import render
from explain.steps import Explanation
from k8s import manifests as m
from mesh.model_l7 import GrpcMatch, HttpMatch
from tests.k8s_builders import svc
from tests.unit.test_why import ask, world
from waypoint.matching import GrpcMatcher, HttpMatcher

ALSO = "       also matches, ranks after: "


def route(name: str, *rules: str, created: str = "", kind: str = "HTTPRoute") -> str:
    """A route attached to shop/web:8000 (shop/api:9000 for a GRPCRoute) with ``rules``,
    each the YAML of one rule's matches (backendRefs: the parent, unless it redirects)."""
    parent = "name: web, port: 8000" if kind == "HTTPRoute" else "name: api, port: 9000"
    stamp = f", creationTimestamp: {created!r}" if created else ""
    backends = f"\n    backendRefs: [{{{parent}}}]"
    body = "".join(f"\n  - {r}" + ("" if "Redirect" in r else backends) for r in rules)
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: shop{stamp}}}
spec:
  parentRefs: [{{group: "", kind: Service, {parent}}}]
  rules:{body}
"""


def prefix(path: str, extra: str = "") -> str:
    return f"matches: [{{path: {{type: PathPrefix, value: {path}}}{extra}}}]"


def route_step_json(e: Explanation) -> dict[str, Any]:
    """The route step of ``ambit why -o json``."""
    steps = json.loads(json.dumps(e.to_json()))["steps"]
    return next(s for s in steps if s["what"] == "route")


def route_step_lines(e: Explanation) -> list[str]:
    """The text of the route step: its check lines and what follows them."""
    lines = render(e).splitlines()
    start = next(i for i, line in enumerate(lines) if ": route: " in line)
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    return lines[start + 2 : end]


JAN, FEB = "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"

CASES = [
    pytest.param(
        route("web", prefix("/api"), created=JAN) + route("canary", prefix("/api/v2"), created=FEB),
        {"path": "/api/v2/x"},
        "HTTPRoute shop/canary rule 0 match 0: matched: PathPrefix /api/v2",
        ["shop/web rule 0 (shorter path prefix /api than /api/v2)"],
        id="a-prefix-shadowed-by-a-longer-prefix",
    ),
    pytest.param(
        route("web", prefix("/status"), "matches: [{path: {type: Exact, value: /status}}]"),
        {"path": "/status"},
        "HTTPRoute shop/web rule 1 match 0: matched: Exact /status",
        ["shop/web rule 0 (PathPrefix /status ranks after Exact /status)"],
        id="exact-over-prefix",
    ),
    pytest.param(
        route(
            "web",
            prefix("/", ", headers: [{name: x-a, value: '1'}]"),
            prefix("/", ", headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]"),
        ),
        {"path": "/", "headers": (("x-a", "1"), ("x-b", "2"))},
        "HTTPRoute shop/web rule 1 match 0: matched: PathPrefix /, header x-a=1, header x-b=2",
        ["shop/web rule 0 (fewer header matches, 1 to 2)"],
        id="the-most-headers",
    ),
    pytest.param(
        route("web", prefix("/"), prefix("/", ", method: GET")),
        {"path": "/x"},
        "HTTPRoute shop/web rule 1 match 0: matched: PathPrefix /, method GET",
        ["shop/web rule 0 (no method match; the winner's is GET)"],
        id="a-method",
    ),
    pytest.param(
        route("a", prefix("/"), created=FEB) + route("b", prefix("/"), created=JAN),
        {"path": "/"},
        "HTTPRoute shop/b rule 0 match 0: matched: PathPrefix /",
        [f"shop/a rule 0 (a newer route: created {FEB}, shop/b on {JAN})"],
        id="the-oldest-route-between-equal-rules",
    ),
    pytest.param(
        route("a", prefix("/")) + route("b", prefix("/"), created=JAN),
        {"path": "/"},
        "HTTPRoute shop/b rule 0 match 0: matched: PathPrefix /",
        [f"shop/a rule 0 (no creation time, and shop/b was created {JAN})"],
        id="a-route-with-no-creation-time-last",
    ),
    pytest.param(
        route("b", prefix("/"), created=JAN) + route("a", prefix("/"), created=JAN),
        {"path": "/"},
        "HTTPRoute shop/a rule 0 match 0: matched: PathPrefix /",
        ["shop/b rule 0 (as old as shop/a, whose namespace/name sorts first)"],
        id="equal-age-then-namespace-name",
    ),
    pytest.param(
        route("web", prefix("/"), "name: fallback\n    " + prefix("/")),
        {"path": "/"},
        "HTTPRoute shop/web rule 0 match 0: matched: PathPrefix /",
        ["shop/web rule 1 named fallback (a later rule of the same route than rule 0)"],
        id="rule-order",
    ),
    pytest.param(
        route("web", prefix("/status"), "matches: [{path: {type: Exact, value: /status}}]"),
        {"path": "/status/x"},
        "HTTPRoute shop/web rule 0 match 0: matched: PathPrefix /status",
        [],
        id="only-one-rule-matches",
    ),
    pytest.param(
        route("web", "matches: [{path: {type: PathPrefix, value: /a}}, {path: {value: /}}]"),
        {"path": "/a/x"},
        "HTTPRoute shop/web rule 0 match 0: matched: PathPrefix /a",
        [],
        id="another-match-of-the-same-rule-is-no-other-rule",
    ),
]


@pytest.mark.parametrize(("routes", "request_", "winner", "shadowed"), CASES)
def test_the_rules_that_also_match_are_named_with_why_they_rank_after(
    routes: str, request_: dict[str, Any], winner: str, shadowed: list[str]
) -> None:
    e = ask(world(bound=True, extra_yaml=routes), "shop/sleep", "shop/web", **request_)
    lines = route_step_lines(e)
    assert lines[-1 - len(shadowed)] == f"     - {winner}"
    assert lines[len(lines) - len(shadowed) :] == [ALSO + s for s in shadowed]
    said = [f"{s['route']} rule {s['rule']}" for s in route_step_json(e)["shadowed"]]
    assert said == [" ".join(s.split()[:3]) for s in shadowed]  # JSON: the same rules
    if not shadowed:
        assert "also matches" not in render(e)


def test_json_gives_the_same_as_a_list_on_the_route_step() -> None:
    routes = route("web", prefix("/api"), created=JAN) + route(
        "canary", prefix("/api/v2"), "name: rest\n    " + prefix("/api"), created=FEB
    )
    e = ask(world(bound=True, extra_yaml=routes), "shop/sleep", "shop/web", path="/api/v2/x")
    assert route_step_json(e)["shadowed"] == [
        {"kind": "HTTPRoute", "route": "shop/web", "rule": 0, "name": "",
         "reason": "shorter path prefix /api than /api/v2"},
        {"kind": "HTTPRoute", "route": "shop/canary", "rule": 1, "name": "rest",
         "reason": "shorter path prefix /api than /api/v2"},
    ]  # fmt: skip
    assert all(not s["shadowed"] for s in e.to_json()["steps"] if s["what"] != "route")


def test_a_redirecting_winner_names_the_rules_it_shadows_too() -> None:
    redirect = (
        prefix("/old")
        + "\n    filters: [{type: RequestRedirect, requestRedirect: {path:"
        + " {type: ReplaceFullPath, replaceFullPath: /new}}}]"
    )
    e = ask(world(bound=True, extra_yaml=route("web", prefix("/"), redirect)), "shop/sleep",
            "shop/web", path="/old")  # fmt: skip
    step = next(s for s in e.steps if s.what == "route")
    assert step.outcome == "redirect"
    assert [s.reason for s in step.shadowed] == ["shorter path prefix / than /old"]


GRPC_PORT = (m.ServicePortSpec(port=9000, target_port=9000, name="grpc"),)


def test_grpc_rules_rank_by_the_characters_of_service_and_method() -> None:
    api = svc("api", "shop", cluster_ip="10.96.0.40", ports=GRPC_PORT, selector={"app": "web"},
              labels={"istio.io/use-waypoint": "waypoint"})  # fmt: skip
    routes = route(
        "api",
        "matches: [{method: {service: pkg.Api}}]",
        "matches: [{method: {service: pkg.Api, method: Get}}]",
        "matches: [{headers: [{name: x-a, value: '1'}]}]",
        kind="GRPCRoute",
    )
    snapshot = world(api, bound=True, extra_yaml=routes)
    e = ask(snapshot, "shop/sleep", "shop/api", method="POST", path="/pkg.Api/Get",
            headers=(("x-a", "1"),))  # fmt: skip
    assert route_step_lines(e)[-3:] == [
        "     - GRPCRoute shop/api rule 1 match 0: matched: service pkg.Api, method Get",
        ALSO + "shop/api rule 0 (shorter gRPC method match, any to Get)",
        ALSO + "shop/api rule 2 (shorter gRPC service match, any to pkg.Api)",
    ]


def test_every_place_of_a_precedence_has_a_name() -> None:
    """The names ``why`` says a rule lost on stand beside the precedence they name."""
    http, grpc = HttpMatcher.compile(HttpMatch()), GrpcMatcher.compile(GrpcMatch())
    assert len(HttpMatcher.PRECEDENCE) == len(http.precedence)
    assert len(GrpcMatcher.PRECEDENCE) == len(grpc.precedence)
