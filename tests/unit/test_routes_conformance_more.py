"""Gateway API's mesh conformance tests for redirects, weights and GRPCRoute, on the route
table alone (see ``test_routes_conformance.py``). Weighted tests send the suite's 500
requests and allow its 5-point tolerance, with seeded randomness, for several seeds."""

from __future__ import annotations

import pytest

from tests.route_builders import NS, backend_of, dial, distribution, table
from waypoint.decisions import Forward, RedirectTo
from waypoint.http_request import HttpRequest

PARENT = "parentRefs: [{group: '', kind: Service, name: echo, port: 80}]"
GRPC_PARENT = "parentRefs: [{group: '', kind: Service, name: echo, port: 7070}]"
REQUESTS = 500  # the suite's batch
TOLERANCE = 0.05


def route(rules: list[str], kind: str = "HTTPRoute", parent: str = PARENT) -> str:
    return f"""
    apiVersion: gateway.networking.k8s.io/v1
    kind: {kind}
    metadata: {{name: r, namespace: {NS}}}
    spec:
      {parent}
      rules: [{", ".join(rules)}]
    """


def redirect(prefix: str, settings: str) -> str:
    return (
        f"{{matches: [{{path: {{type: PathPrefix, value: '{prefix}'}}}}],"
        f" filters: [{{type: RequestRedirect, requestRedirect: {{{settings}}}}}]}}"
    )


REDIRECTS = {
    # MeshHTTPRouteRedirectHostAndStatus
    "host-and-status": route([
        redirect("/hostname-redirect", "hostname: example.org"),
        redirect("/host-and-status", "statusCode: 301, hostname: example.org"),
    ]),
    # MeshHTTPRouteRedirectPath
    "path": route([
        redirect("/original-prefix",
                 "path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}"),
        redirect("/full",
                 "path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}"),
        redirect("/path-and-host", "hostname: example.org, path: {type: ReplacePrefixMatch,"
                 " replacePrefixMatch: /replacement-prefix}"),
        redirect("/path-and-status", "path: {type: ReplacePrefixMatch, replacePrefixMatch:"
                 " /replacement-prefix}, statusCode: 301"),
        redirect("/full-path-and-host", "hostname: example.org, path: {type: ReplaceFullPath,"
                 " replaceFullPath: /replacement-full}"),
        redirect("/full-path-and-status", "path: {type: ReplaceFullPath, replaceFullPath:"
                 " /replacement-full}, statusCode: 301"),
    ]),
    # MeshHTTPRouteRedirectPort
    "port": route([
        redirect("/port", "port: 8083"),
        redirect("/port-and-host", "hostname: example.org, port: 8083"),
        redirect("/port-and-status", "port: 8083, statusCode: 301"),
        redirect("/port-and-host-and-status", "port: 8083, hostname: example.org,"
                 " statusCode: 302"),
    ]),
    # MeshHTTPRouteSchemeRedirect
    "scheme": route([
        redirect("/scheme", "scheme: https"),
        redirect("/scheme-and-host", "hostname: example.org, scheme: https"),
        redirect("/scheme-and-status", "scheme: https, statusCode: 301"),
        redirect("/scheme-and-host-and-status", "scheme: https, statusCode: 302,"
                 " hostname: example.org"),
    ]),
    # MeshHTTPRoute303Redirect, MeshHTTPRoute307Redirect, MeshHTTPRoute308Redirect
    "303": route([redirect("/redirect", "statusCode: 303")]),
    "307": route([redirect("/temporary", "statusCode: 307")]),
    "308": route([redirect("/permanent", "statusCode: 308")]),
}  # fmt: skip


@pytest.mark.parametrize(
    ("routes", "path", "status", "location"),
    [
        ("host-and-status", "/hostname-redirect", 302, "http://example.org/hostname-redirect"),
        ("host-and-status", "/host-and-status", 301, "http://example.org/host-and-status"),
        ("path", "/original-prefix/lemon", 302, "http://echo/replacement-prefix/lemon"),
        ("path", "/full/path/original", 302, "http://echo/full-path-replacement"),
        ("path", "/path-and-host", 302, "http://example.org/replacement-prefix"),
        ("path", "/path-and-status", 301, "http://echo/replacement-prefix"),
        ("path", "/full-path-and-host", 302, "http://example.org/replacement-full"),
        ("path", "/full-path-and-status", 301, "http://echo/replacement-full"),
        ("port", "/port", 302, "http://echo:8083/port"),
        ("port", "/port-and-host", 302, "http://example.org:8083/port-and-host"),
        ("port", "/port-and-status", 301, "http://echo:8083/port-and-status"),
        ("port", "/port-and-host-and-status", 302,
         "http://example.org:8083/port-and-host-and-status"),
        ("scheme", "/scheme", 302, "https://echo/scheme"),
        ("scheme", "/scheme-and-host", 302, "https://example.org/scheme-and-host"),
        ("scheme", "/scheme-and-status", 301, "https://echo/scheme-and-status"),
        ("scheme", "/scheme-and-host-and-status", 302,
         "https://example.org/scheme-and-host-and-status"),
        ("303", "/redirect", 303, "http://echo/redirect"),
        ("307", "/temporary", 307, "http://echo/temporary"),
        ("308", "/permanent", 308, "http://echo/permanent"),
    ],
)  # fmt: skip
def test_mesh_httproute_redirects(routes: str, path: str, status: int, location: str) -> None:
    """MeshHTTPRouteRedirectHostAndStatus, ...RedirectPath, ...RedirectPort,
    MeshHTTPRouteSchemeRedirect and MeshHTTPRoute303/307/308Redirect."""
    decision = table(REDIRECTS[routes]).route(dial("echo"), HttpRequest("GET", path, "echo"))
    assert isinstance(decision, RedirectTo)
    assert (decision.status, decision.location) == (status, location)


# --- Weights -----------------------------------------------------------------------------


def check_weights(seen: dict[str, int], expected: dict[str, float]) -> None:
    assert sum(seen.values()) == REQUESTS
    assert set(seen) <= set(expected)
    for backend, share in expected.items():
        got = seen.get(backend, 0) / REQUESTS
        assert abs(got - share) <= TOLERANCE, (backend, got, share)


@pytest.mark.parametrize("seed", range(10))
def test_mesh_httproute_weight(seed: int) -> None:
    routes = table(route(["{backendRefs: [{name: echo-v1, port: 8080, weight: 70},"
                          " {name: echo-v2, port: 8080, weight: 30}]}"]))  # fmt: skip
    check_weights(distribution(routes, REQUESTS, seed), {"echo-v1": 0.7, "echo-v2": 0.3})


GRPC_WEIGHT = route(
    ["{backendRefs: [{name: echo-v1, port: 7070, weight: 70}, {name: echo-v2, port: 7070,"
     " weight: 30}, {name: echo-v3, port: 7070, weight: 0}]}"],
    kind="GRPCRoute",
    parent=GRPC_PARENT,
)  # fmt: skip


@pytest.mark.parametrize("seed", range(10))
def test_mesh_grpcroute_weight(seed: int) -> None:
    seen = distribution(table(GRPC_WEIGHT), REQUESTS, seed, host="echo:7070",
                        path="/proto.EchoTestService/Echo")  # fmt: skip
    assert "echo-v3" not in seen  # weight 0
    check_weights(seen, {"echo-v1": 0.7, "echo-v2": 0.3})


# --- MeshGRPCRouteRequestHeaderModifier --------------------------------------------------


def grpc_rule(case: str, modifier: str, backend: str) -> str:
    return (
        f"{{matches: [{{headers: [{{name: x-test-case, value: {case}}}]}}], filters:"
        f" [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}],"
        f" backendRefs: [{{name: {backend}, port: 7070}}]}}"
    )


GRPC_MODIFIER = route(
    [
        grpc_rule("set", "{set: [{name: x-header-set, value: set-overwrites-values}]}",
                  "echo-v1"),
        grpc_rule("add", "{add: [{name: x-header-add, value: add-appends-values}]}", "echo-v1"),
        grpc_rule("remove", "{remove: [x-header-remove]}", "echo-v1"),
        grpc_rule("multi", "{set: [{name: x-header-set-1, value: header-set-1}, {name:"
                  " x-header-set-2, value: header-set-2}], add: [{name: x-header-add-1, value:"
                  " header-add-1}, {name: x-header-add-2, value: header-add-2}], remove:"
                  " [x-header-remove-1, x-header-remove-2]}", "echo-v2"),
    ],
    kind="GRPCRoute",
    parent=GRPC_PARENT,
)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "sent", "expected", "absent", "backend"),
    [
        ("set", {"some-other-header": "this-header-should-be-set",
                 "x-header-set": "this-value-should-be-overwritten"},
         {"some-other-header": "this-header-should-be-set",
          "x-header-set": "set-overwrites-values"}, [], "echo-v1"),
        ("add", {"x-header-add": "this-value-should-be-appended"},
         {"x-header-add": "this-value-should-be-appended,add-appends-values"}, [], "echo-v1"),
        ("remove", {"x-header-remove": "this-should-be-removed"}, {}, ["x-header-remove"],
         "echo-v1"),
        ("multi", {"x-header-set-2": "set-header-2", "x-header-add-2": "add-header-2",
                   "x-header-remove-2": "should-be-removed-2"},
         {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2",
          "x-header-add-1": "header-add-1", "x-header-add-2": "add-header-2,header-add-2"},
         ["x-header-remove-1", "x-header-remove-2"], "echo-v2"),
    ],
)  # fmt: skip
def test_mesh_grpcroute_request_header_modifier(
    case: str, sent: dict[str, str], expected: dict[str, str], absent: list[str], backend: str
) -> None:
    headers = (("content-type", "application/grpc"), ("x-test-case", case), *sent.items())
    request = HttpRequest("POST", "/proto.EchoTestService/Echo", "echo:7070", headers)
    decision = table(GRPC_MODIFIER).route(dial("echo:7070"), request)
    assert isinstance(decision, Forward)
    assert backend_of(decision) == backend
    assert decision.rule.kind == "GRPCRoute"
    assert decision.request.header("x-test-case") == case
    for name, value in expected.items():
        assert decision.request.header(name) == value, name
    for name in absent:
        assert decision.request.header(name) is None, name
