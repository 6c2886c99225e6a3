"""Gateway API's mesh conformance tests, one table-driven test each, on the route table
alone: the same routes (read from YAML by the manifest reader), the same requests, the
same expected backend, status and headers as the suite checks against a live mesh.
Redirects, gRPC and weights are in ``test_routes_conformance_more.py``;
``docs/conformance.md`` maps each suite test to its unit test."""

from __future__ import annotations

import pytest

from tests.route_builders import (
    CONSUMER_NS,
    NS,
    POD_IPS,
    backend_of,
    echo_services,
    response_headers,
    send,
    status_of,
    table,
)
from waypoint.decisions import Forward, NoRoutes
from waypoint.routes import compile_routes

PARENT = "parentRefs: [{group: '', kind: Service, name: echo, port: 80}]"


def http_route(name: str, rules: str, parent: str = PARENT, namespace: str = NS) -> str:
    return f"""
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: {name}, namespace: {namespace}}}
    spec:
      {parent}
      rules: {rules}
    """


# --- MeshBasic ---------------------------------------------------------------------------


def test_mesh_basic_no_route_goes_straight_to_the_service() -> None:
    routes = compile_routes(echo_services())
    decision = send(routes, host="echo")
    assert decision == NoRoutes(f"{NS}/echo", 80)
    assert status_of(decision) == 200


# --- MeshHTTPRouteSimpleSameNamespace ----------------------------------------------------


def test_mesh_httproute_simple_same_namespace() -> None:
    routes = table(http_route("simple", "[{backendRefs: [{name: echo-v1, port: 8080}]}]"))
    decision = send(routes, "/", host="echo")
    assert (status_of(decision), backend_of(decision)) == (200, "echo-v1")
    assert isinstance(decision, Forward)
    assert decision.backend.port == 8080


# --- MeshHTTPRouteMatching ---------------------------------------------------------------

MATCHING = http_route(
    "matching",
    """
      - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """,
)


@pytest.mark.parametrize(
    ("path", "headers", "backend"),
    [
        ("/", {}, "echo-v1"),
        ("/example", {}, "echo-v1"),
        ("/", {"Version": "one"}, "echo-v1"),
        ("/v2", {}, "echo-v2"),
        ("/v2/example", {}, "echo-v2"),
        ("/", {"Version": "two"}, "echo-v2"),
        ("/v2/", {}, "echo-v2"),
        ("/v2example", {}, "echo-v1"),  # not a segment of /v2
        ("/foo/v2/example", {}, "echo-v1"),
    ],
)
def test_mesh_httproute_matching(path: str, headers: dict[str, str], backend: str) -> None:
    assert backend_of(send(table(MATCHING), path, headers=headers)) == backend


# --- MeshHTTPRouteQueryParamMatching -----------------------------------------------------

QUERY = http_route(
    "query",
    """
      - matches: [{queryParams: [{name: animal, value: whale}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{queryParams: [{name: animal, value: dolphin}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /path1},
                   queryParams: [{name: animal, value: whale}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{headers: [{name: version, value: one}],
                   queryParams: [{name: animal, value: whale}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches:
        - {path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}
        - path: {type: PathPrefix, value: /path4}
          headers: [{name: version, value: three}]
          queryParams: [{name: animal, value: kraken}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /path5}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{queryParams: [{name: animal, value: hydra}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """,
)


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/?animal=whale", {}, "echo-v1"),
        ("/?animal=dolphin", {}, "echo-v2"),
        ("/?animal=whale&otherparam=irrelevant", {}, "echo-v1"),
        ("/?animal=dolphin&color=yellow", {}, "echo-v2"),
        ("/?color=blue", {}, 404),
        ("/?animal=dog", {}, 404),
        ("/?animal=whaledolphin", {}, 404),
        ("/", {}, 404),
        ("/path1?animal=whale", {}, "echo-v1"),
        ("/?animal=whale", {"version": "one"}, "echo-v2"),  # more matches win
        ("/path3?animal=shark", {}, "echo-v1"),  # either match of a rule
        ("/path4?animal=kraken", {"version": "three"}, "echo-v1"),
        ("/?animal=shark", {}, 404),  # every part of a match
        ("/path4?animal=kraken", {}, 404),
        ("/path5?animal=hydra", {}, "echo-v1"),  # a longer prefix beats a parameter
    ],
)
def test_mesh_httproute_query_param_matching(
    path: str, headers: dict[str, str], expected: str | int
) -> None:
    decision = send(table(QUERY), path, headers=headers)
    if isinstance(expected, int):
        assert status_of(decision) == expected
        assert decision.flag == "NR"  # type: ignore[union-attr]
    else:
        assert backend_of(decision) == expected


# --- MeshTrafficSplit --------------------------------------------------------------------

SPLIT = http_route(
    "split",
    """
      - matches: [{path: {type: Exact, value: /v1}}]
        backendRefs: [{name: echo-v1, port: 80}]
      - matches: [{path: {type: Exact, value: /v2}}]
        backendRefs: [{name: echo-v2, port: 80}]
    """,
    parent="parentRefs: [{group: '', kind: Service, name: echo}]",
)


@pytest.mark.parametrize(("path", "backend"), [("/v1", "echo-v1"), ("/v2", "echo-v2")])
def test_mesh_traffic_split(path: str, backend: str) -> None:
    decision = send(table(SPLIT), path, host="echo")
    assert (status_of(decision), backend_of(decision)) == (200, backend)


# --- MeshPorts ---------------------------------------------------------------------------


def header_route(name: str, service: str, value: str, port: str = "") -> str:
    parent = f"parentRefs: [{{group: '', kind: Service, name: {service}{port}}}]"
    rules = f"""
      - filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{set: [{{name: X-Header-Set, value: {value}}}]}}
        backendRefs: [{{name: {service}, port: 80}}]
    """
    return http_route(name, rules, parent)


PORTS = (
    header_route("ports-v1", "echo-v1", "v1", ", port: 80")
    + "---"
    + header_route("ports-v2", "echo-v2", "v2")
)


@pytest.mark.parametrize(
    ("host", "header", "backend"),
    [
        ("echo-v1", "v1", "echo-v1"),  # the route's port
        ("echo-v1:8080", None, "echo-v1"),  # another port: the route does not apply
        ("echo-v2", "v2", "echo-v2"),  # no port: every port
        ("echo-v2:8080", "v2", "echo-v2"),
    ],
)
def test_mesh_ports(host: str, header: str | None, backend: str) -> None:
    decision = send(table(PORTS), host=host)
    assert (status_of(decision), backend_of(decision)) == (200, backend)
    assert response_headers(decision).get("x-header-set") == header


# --- MeshFrontend and MeshFrontendHostname -----------------------------------------------

FRONTEND = header_route("frontend", "echo-v2", "set")


def test_mesh_frontend_routes_apply_to_the_service_not_to_its_pods() -> None:
    routes = table(FRONTEND)
    to_service = send(routes, host="echo-v2")
    assert backend_of(to_service) == "echo-v2"
    assert response_headers(to_service) == {"x-header-set": "set"}
    to_pod = send(routes, host=f"{POD_IPS['echo-v2']}:8080")
    assert to_pod == NoRoutes(None, 8080)  # straight to the pod, no route
    assert response_headers(to_pod) == {}


@pytest.mark.parametrize(
    ("dialled", "host_header", "header", "backend"),
    [
        ("echo-v2", "echo-v1", "set", "echo-v2"),  # the address decides, not Host
        ("echo-v1", "echo-v2", None, "echo-v1"),
    ],
)
def test_mesh_frontend_hostname(
    dialled: str, host_header: str, header: str | None, backend: str
) -> None:
    decision = send(table(FRONTEND), host=dialled, host_header=host_header)
    assert (status_of(decision), backend_of(decision)) == (200, backend)
    assert response_headers(decision).get("x-header-set") == header


# --- MeshConsumerRoute -------------------------------------------------------------------

CONSUMER = http_route(
    "consumer",
    """
      - filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}
        backendRefs: [{name: echo-v1, namespace: gateway-conformance-mesh, port: 80}]
    """,
    parent=f"parentRefs: [{{group: '', kind: Service, name: echo-v1, namespace: {NS}}}]",
    namespace=CONSUMER_NS,
)


@pytest.mark.parametrize(
    ("source", "header"), [(CONSUMER_NS, "set"), (NS, None), ("elsewhere", None)]
)
def test_mesh_consumer_route_applies_only_to_its_namespace(source: str, header: str) -> None:
    decision = send(table(CONSUMER), host="echo-v1", source_namespace=source)
    assert (status_of(decision), backend_of(decision)) == (200, "echo-v1")
    assert response_headers(decision).get("x-header-set") == header


# --- MeshHTTPRouteRequestHeaderModifier and MeshHTTPRouteBackendRequestHeaderModifier --------


def modifier_route(on_backend: bool) -> str:
    cases = {
        "/set": "{set: [{name: X-Header-Set, value: set-overwrites-values}]}",
        "/add": "{add: [{name: X-Header-Add, value: add-appends-values}]}",
        "/remove": "{remove: [X-Header-Remove]}",
        "/multiple": "{set: [{name: X-Header-Set-1, value: header-set-1},"
        " {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1,"
        " value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name:"
        " X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}",
        "/case-insensitivity": "{set: [{name: X-Header-Set, value: header-set}], add:"
        " [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}",
    }
    rules = []
    for path, modifier in cases.items():
        f = f"[{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]"
        backend = f"{{name: echo-v1, port: 8080{', filters: ' + f if on_backend else ''}}}"
        rule_filters = "" if on_backend else f", filters: {f}"
        match = f"[{{path: {{type: PathPrefix, value: '{path}'}}}}]"
        rules.append(f"{{matches: {match}{rule_filters}, backendRefs: [{backend}]}}")
    return http_route("modifier", "[" + ", ".join(rules) + "]")


MODIFIER_CASES = [
    ("/set", {"Some-Other-Header": "val"},
     {"some-other-header": "val", "x-header-set": "set-overwrites-values"}, []),
    ("/set", {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
     {"some-other-header": "val", "x-header-set": "set-overwrites-values"}, []),
    ("/add", {"Some-Other-Header": "val"},
     {"some-other-header": "val", "x-header-add": "add-appends-values"}, []),
    ("/add", {"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
     {"some-other-header": "val", "x-header-add": "some-other-value,add-appends-values"}, []),
    ("/remove", {"X-Header-Remove": "val"}, {}, ["x-header-remove"]),
    ("/multiple",
     {"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
      "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val"},
     {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2",
      "x-header-add-1": "header-add-1", "x-header-add-2": "add-val-2,header-add-2",
      "x-header-add-3": "header-add-3", "another-header": "another-header-val"},
     ["x-header-remove-1", "x-header-remove-2"]),
    ("/case-insensitivity",
     {"x-header-set": "original-val-set", "x-header-add": "original-val-add",
      "x-header-remove": "original-val-remove", "Another-Header": "another-header-val"},
     {"x-header-set": "header-set", "x-header-add": "original-val-add,header-add",
      "another-header": "another-header-val"},
     ["x-header-remove"]),
]  # fmt: skip


@pytest.mark.parametrize("on_backend", [False, True], ids=["rule", "backendRef"])
@pytest.mark.parametrize(("path", "sent", "expected", "absent"), MODIFIER_CASES)
def test_mesh_httproute_request_header_modifier(
    on_backend: bool,
    path: str,
    sent: dict[str, str],
    expected: dict[str, str],
    absent: list[str],
) -> None:
    """MeshHTTPRouteRequestHeaderModifier (filters on the rule) and
    MeshHTTPRouteBackendRequestHeaderModifier (the same filters on the backendRef)."""
    decision = send(table(modifier_route(on_backend)), path, headers=sent)
    assert isinstance(decision, Forward)
    assert backend_of(decision) == "echo-v1"
    assert decision.request.path == path
    for name, value in expected.items():
        assert decision.request.header(name) == value, name
    for name in absent:
        assert decision.request.header(name) is None, name


# --- MeshHTTPRouteRewritePath ------------------------------------------------------------

MODIFY = (
    "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value:"
    " set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name:"
    " X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}"
)


def rewrite(prefix: str, kind: str, value: str, more: str = "") -> str:
    field = "replacePrefixMatch" if kind == "ReplacePrefixMatch" else "replaceFullPath"
    f = f"{{type: URLRewrite, urlRewrite: {{path: {{type: {kind}, {field}: '{value}'}}}}}}"
    return (
        f"{{matches: [{{path: {{type: PathPrefix, value: '{prefix}'}}}}],"
        f" filters: [{f}{more}], backendRefs: [{{name: echo-v1, port: 80}}]}}"
    )


REWRITE = http_route(
    "rewrite",
    "["
    + ", ".join(
        [
            rewrite("/prefix/one", "ReplacePrefixMatch", "/one"),
            rewrite("/strip-prefix", "ReplacePrefixMatch", "/"),
            rewrite("/full/one", "ReplaceFullPath", "/one"),
            rewrite("/full/rewrite-path-and-modify-headers", "ReplaceFullPath", "/test",
                    ", " + MODIFY),
            rewrite("/prefix/rewrite-path-and-modify-headers", "ReplacePrefixMatch", "/prefix",
                    ", " + MODIFY),
        ]
    )
    + "]",
)  # fmt: skip
SENT = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
        "X-Header-Set": "set-val"}  # fmt: skip
MODIFIED = {"x-header-add": "header-val-1", "x-header-add-append": "append-val-1,header-val-2",
            "x-header-set": "set-overwrites-values", "x-header-remove": None}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "headers", "rewritten", "expected"),
    [
        ("/prefix/one/two", {}, "/one/two", {}),
        ("/strip-prefix/three", {}, "/three", {}),
        ("/strip-prefix", {}, "/", {}),
        ("/full/one/two", {}, "/one", {}),
        ("/full/rewrite-path-and-modify-headers/test", SENT, "/test", MODIFIED),
        ("/prefix/rewrite-path-and-modify-headers/one", SENT, "/prefix/one", MODIFIED),
    ],
)
def test_mesh_httproute_rewrite_path(
    path: str, headers: dict[str, str], rewritten: str, expected: dict[str, str | None]
) -> None:
    decision = send(table(REWRITE), path, headers=headers)
    assert isinstance(decision, Forward)
    assert (backend_of(decision), decision.request.path) == ("echo-v1", rewritten)
    assert decision.request.authority == "echo"
    for name, value in expected.items():
        assert decision.request.header(name) == value, name


# --- MeshHTTPRouteNamedRule --------------------------------------------------------------

NAMED = http_route(
    "named",
    """
      - name: named-rule
        matches: [{path: {type: PathPrefix, value: /named}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /unnamed}}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """,
)


@pytest.mark.parametrize(
    ("path", "backend", "rule_name"),
    [("/named", "echo-v1", "named-rule"), ("/unnamed", "echo-v2", "")],
)
def test_mesh_httproute_named_rule(path: str, backend: str, rule_name: str) -> None:
    decision = send(table(NAMED), path)
    assert isinstance(decision, Forward)
    assert (backend_of(decision), decision.request.path) == (backend, path)
    assert decision.rule.name == rule_name
