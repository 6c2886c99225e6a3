"""Gateway API kinds and RequestAuthentication: good documents read into typed objects
with the API server's defaults, and every bad one refused with an error naming the
document and the field, as the CRDs' schema and CEL rules (or Istio's) would refuse it."""

from __future__ import annotations

import copy
import textwrap
from typing import Any

import pytest

from k8s.manifests import (
    KINDS,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    ManifestError,
    PolicyTargetRef,
    RequestAuthentication,
    kind_info,
    loads,
    parse_object,
)
from k8s.manifests import Gateway as GatewayObject
from k8s.store import ref_of
from mesh.model_l7 import (
    BackendRef,
    ClaimToHeader,
    Cors,
    Filter,
    GatewayAddress,
    GrpcMatch,
    GrpcRetry,
    GrpcRule,
    HeaderMatch,
    HeaderModifier,
    HttpMatch,
    HttpRule,
    JwtHeader,
    JwtRule,
    Listener,
    Mirror,
    ParentRef,
    PathModifier,
    Redirect,
    Retry,
    RouteGroupKind,
    UrlRewrite,
)
from mesh.model_traffic import ExtensionRef

GW = "gateway.networking.k8s.io"
ISTIO = "security.istio.io/v1"


def one(text: str) -> object:
    (obj,) = loads(textwrap.dedent(text), "test.yaml")
    return obj


# --- good documents --------------------------------------------------------------------------


def test_the_kinds_are_declared_once_with_kubectls_names() -> None:
    by_kind = {k.kind: k for k in KINDS}
    new = ["RequestAuthentication", "GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute"]
    assert [k.kind for k in KINDS][-9:-4] == new
    assert by_kind["GatewayClass"].short_names == ("gc",)
    assert not by_kind["GatewayClass"].namespaced
    assert by_kind["Gateway"].short_names == ("gtw",)
    assert by_kind["HTTPRoute"].short_names == by_kind["GRPCRoute"].short_names == ()
    assert by_kind["RequestAuthentication"].short_names == ()
    assert by_kind["GRPCRoute"].api_versions == (f"{GW}/v1",)
    assert by_kind["HTTPRoute"].api_versions == (f"{GW}/v1", f"{GW}/v1beta1")
    names = {
        "gc": "GatewayClass",
        "gtw": "Gateway",
        "httproutes": "HTTPRoute",
        f"grpcroutes.{GW}": "GRPCRoute",
        "requestauthentication": "RequestAuthentication",
        "requestauthentications": "RequestAuthentication",
    }
    for name, kind in names.items():
        info = kind_info(name)
        assert info is not None
        assert info.kind == kind


@pytest.mark.parametrize("api", [f"{GW}/v1", f"{GW}/v1beta1"])
def test_gateway_class_is_cluster_scoped(api: str) -> None:
    gc = one(
        f"""
        apiVersion: {api}
        kind: GatewayClass
        metadata: {{name: istio-waypoint}}
        spec:
          controllerName: istio.io/mesh-controller
          description: The waypoints of the mesh
        """
    )
    assert gc == GatewayClass(
        name="istio-waypoint",
        controller_name="istio.io/mesh-controller",
        description="The waypoints of the mesh",
    )
    assert isinstance(gc, GatewayClass)
    assert ref_of(gc) == ("GatewayClass", "", "istio-waypoint")


def test_a_waypoint_gateway() -> None:
    gateway = one(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata:
          name: waypoint
          namespace: shop
          labels: {istio.io/waypoint-for: all}
        spec:
          gatewayClassName: istio-waypoint
          listeners:
          - {name: mesh, port: 15008, protocol: HBONE}
        """
    )
    assert gateway == GatewayObject(
        name="waypoint",
        namespace="shop",
        labels=(("istio.io/waypoint-for", "all"),),
        gateway_class="istio-waypoint",
        listeners=(Listener("mesh", 15008, "HBONE"),),
    )


def test_a_gateway_with_tls_addresses_and_allowed_routes() -> None:
    gateway = one(
        """
        apiVersion: gateway.networking.k8s.io/v1beta1
        kind: Gateway
        metadata: {name: edge, namespace: infra}
        spec:
          gatewayClassName: example
          addresses:
          - {value: 192.0.2.10}
          - {type: Hostname, value: edge.example.com}
          listeners:
          - name: web
            port: 443
            protocol: HTTPS
            hostname: "*.example.com"
            tls: {certificateRefs: [{name: edge-cert}]}
            allowedRoutes:
              namespaces: {from: Selector, selector: {matchLabels: {shared: "yes"}}}
              kinds: [{kind: HTTPRoute}]
          - name: passthrough
            port: 8443
            protocol: TLS
            tls: {mode: Passthrough}
            allowedRoutes: {namespaces: {from: All}}
          - {name: plain, port: 80, protocol: HTTP}
        """
    )
    assert isinstance(gateway, GatewayObject)
    assert gateway.addresses == (
        GatewayAddress("IPAddress", "192.0.2.10"),
        GatewayAddress("Hostname", "edge.example.com"),
    )
    assert gateway.listeners == (
        Listener("web", 443, "HTTPS", "*.example.com", "Terminate", "Selector",
                 (("shared", "yes"),), (RouteGroupKind(GW, "HTTPRoute"),)),
        Listener("passthrough", 8443, "TLS", tls_mode="Passthrough", allowed_from="All"),
        Listener("plain", 80, "HTTP"),
    )  # fmt: skip


def test_an_http_route_for_a_service_splits_traffic_by_weight() -> None:
    route = one(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: reviews, namespace: shop}
        spec:
          parentRefs:
          - {group: "", kind: Service, name: reviews, port: 9080}
          rules:
          - matches:
            - headers: [{name: x-canary, value: "1"}]
            backendRefs:
            - {name: reviews-v2, port: 9080}
          - backendRefs:
            - {name: reviews-v1, port: 9080, weight: 90}
            - {name: reviews-v2, port: 9080, weight: 10}
            timeouts: {request: 10s, backendRequest: 2s}
        """
    )
    assert route == HTTPRoute(
        name="reviews",
        namespace="shop",
        parent_refs=(ParentRef("", "Service", "reviews", port=9080),),
        rules=(
            HttpRule(
                (HttpMatch(headers=(HeaderMatch("x-canary", "1"),)),),
                backends=(BackendRef("reviews-v2", 9080),),
            ),
            HttpRule(
                (HttpMatch(),),
                backends=(
                    BackendRef("reviews-v1", 9080, weight=90),
                    BackendRef("reviews-v2", 9080, weight=10),
                ),
                timeout_ms=10_000,
                backend_timeout_ms=2000,
            ),
        ),
    )


def test_an_http_route_rules_retry_is_kept_with_istios_defaults_where_unset() -> None:
    """GEP-1731: ``codes``, ``attempts``, ``backoff``; what is unset takes Istio's default
    (2 attempts) and Envoy's base interval (25 ms)."""
    rules: list[dict[str, Any]] = [
        {"retry": {"codes": [503, 502, 503], "attempts": 3, "backoff": "100ms"}},
        {"retry": {"codes": [500]}},
        {"retry": {}},
        {},
    ]
    route = parse_object(http(*rules), "routes.yaml")
    assert isinstance(route, HTTPRoute)
    assert [r.retry for r in route.rules] == [
        Retry(codes=(502, 503), attempts=3, backoff_ms=100),
        Retry(codes=(500,), attempts=2, backoff_ms=25),
        Retry(),  # no codes: only connect failures are retried, as without it
        None,
    ]


def test_a_grpc_route_rules_retry_takes_grpc_status_codes_by_number_or_name() -> None:
    rules: list[dict[str, Any]] = [
        {"retry": {"codes": ["UNAVAILABLE", 8, "resource_exhausted"], "attempts": 3,
                   "backoff": "10ms"}},
        {"retry": {"codes": [14]}},
        {},
    ]  # fmt: skip
    route = parse_object(grpc(*rules), "routes.yaml")
    assert isinstance(route, GRPCRoute)
    assert [r.retry for r in route.rules] == [
        GrpcRetry(codes=(8, 14), attempts=3, backoff_ms=10),
        GrpcRetry(codes=(14,)),
        None,
    ]


def test_an_http_route_gets_the_api_servers_defaults() -> None:
    route = one(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: all, namespace: shop}
        spec:
          parentRefs: [{name: edge, namespace: infra, sectionName: web}]
        """
    )
    assert isinstance(route, HTTPRoute)
    assert route.parent_refs == (ParentRef(GW, "Gateway", "edge", "infra", "web"),)
    assert route.rules == (HttpRule((HttpMatch("PathPrefix", "/"),)),)


def test_every_filter_is_kept() -> None:
    route = one(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: filters, namespace: shop}
        spec:
          hostnames: [shop.example.com, "*.shop.example.com"]
          rules:
          - matches:
            - path: {type: PathPrefix, value: /old}
              queryParams: [{name: v, value: "2", type: RegularExpression}]
              method: GET
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier:
                set: [{name: x-from, value: mesh}]
                add: [{name: x-tag, value: a}]
                remove: [x-secret]
            - type: ResponseHeaderModifier
              responseHeaderModifier: {remove: [server]}
            - type: URLRewrite
              urlRewrite:
                hostname: new.example.com
                path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
            - type: RequestMirror
              requestMirror:
                backendRef: {name: audit, port: 8080}
                fraction: {numerator: 1, denominator: 1000}
            - type: ExtensionRef
              extensionRef: {group: example.com, kind: Limit, name: slow}
            backendRefs: [{name: web, port: 80}]
          - matches: [{path: {type: Exact, value: /gone}}]
            filters:
            - type: RequestRedirect
              requestRedirect:
                scheme: https
                port: 443
                statusCode: 301
                path: {type: ReplaceFullPath, replaceFullPath: /here}
        """
    )
    assert isinstance(route, HTTPRoute)
    assert route.hostnames == ("shop.example.com", "*.shop.example.com")
    first, second = route.rules
    assert first.matches == (
        HttpMatch("PathPrefix", "/old", (), (HeaderMatch("v", "2", "RegularExpression"),), "GET"),
    )
    assert first.filters == (
        Filter(
            "RequestHeaderModifier",
            request_headers=HeaderModifier((("x-from", "mesh"),), (("x-tag", "a"),), ("x-secret",)),
        ),
        Filter("ResponseHeaderModifier", response_headers=HeaderModifier(remove=("server",))),
        Filter(
            "URLRewrite",
            rewrite=UrlRewrite("new.example.com", PathModifier("ReplacePrefixMatch", "/new")),
        ),
        Filter("RequestMirror", mirror=Mirror(BackendRef("audit", 8080), 1, 1000)),
        Filter("ExtensionRef", extension=ExtensionRef("example.com", "Limit", "slow")),
    )
    assert not first.filters[-1].supported
    full_path = PathModifier("ReplaceFullPath", "/here")
    redirect = Redirect("https", "", full_path, 443, 301)
    assert second.filters == (Filter("RequestRedirect", redirect=redirect),)
    assert second.backends == ()


def test_a_cors_filter_keeps_its_settings() -> None:
    route = one(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: cors, namespace: shop}
        spec:
          rules:
          - filters:
            - type: CORS
              cors:
                allowOrigins: ["https://www.foo.com", "https://*.bar.com:8443"]
                allowMethods: [GET, OPTIONS]
                allowHeaders: [x-header-1]
                exposeHeaders: ["*"]
                allowCredentials: true
                maxAge: 3600
          - filters: [{type: CORS, cors: {}}]
        """
    )
    assert isinstance(route, HTTPRoute)
    first, second = (rule.filters[0] for rule in route.rules)
    assert first == Filter(
        "CORS",
        cors=Cors(
            ("https://www.foo.com", "https://*.bar.com:8443"),
            True,
            ("GET", "OPTIONS"),
            ("x-header-1",),
            ("*",),
            3600,
        ),
    )
    assert first.supported
    assert second.cors == Cors()  # no origin allowed; maxAge 5


def test_a_grpc_route() -> None:
    route = one(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: greeter, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: greeter}]
          rules:
          - matches:
            - method: {service: helloworld.Greeter, method: SayHello}
              headers: [{name: x-env, value: canary}]
            filters:
            - type: RequestMirror
              requestMirror: {backendRef: {name: greeter-shadow, port: 50051}, percent: 5}
            backendRefs: [{name: greeter-v2, port: 50051}]
          - backendRefs: [{name: greeter, port: 50051}]
        """
    )
    match = GrpcMatch("Exact", "helloworld.Greeter", "SayHello", (HeaderMatch("x-env", "canary"),))
    mirror = Mirror(BackendRef("greeter-shadow", 50051), 5, 100)
    assert route == GRPCRoute(
        name="greeter",
        namespace="shop",
        parent_refs=(ParentRef("", "Service", "greeter"),),
        rules=(
            GrpcRule(
                (match,),
                (Filter("RequestMirror", mirror=mirror),),
                (BackendRef("greeter-v2", 50051),),
            ),
            GrpcRule(backends=(BackendRef("greeter", 50051),)),
        ),
    )


@pytest.mark.parametrize(
    "api", ["security.ambit.io/v1", "security.istio.io/v1", "security.istio.io/v1beta1"]
)
def test_request_authentication(api: str) -> None:
    auth = one(
        f"""
        apiVersion: {api}
        kind: RequestAuthentication
        metadata: {{name: jwt, namespace: shop}}
        spec:
          selector: {{matchLabels: {{app: web}}}}
          jwtRules:
          - issuer: https://issuer.example.com
            audiences: [shop]
            jwksUri: https://issuer.example.com/.well-known/jwks.json
            fromHeaders: [{{name: x-jwt, prefix: "Token "}}]
            fromParams: [token]
            outputPayloadToHeader: x-jwt-payload
            outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
            forwardOriginalToken: true
            timeout: 1.5s
          - issuer: local
            jwks: '{{"keys": []}}'
        """
    )
    assert auth == RequestAuthentication(
        name="jwt",
        namespace="shop",
        selector=(("app", "web"),),
        jwt_rules=(
            JwtRule(
                issuer="https://issuer.example.com",
                audiences=("shop",),
                jwks_uri="https://issuer.example.com/.well-known/jwks.json",
                from_headers=(JwtHeader("x-jwt", "Token "),),
                from_params=("token",),
                output_payload_to_header="x-jwt-payload",
                output_claim_to_headers=(ClaimToHeader("x-sub", "sub"),),
                forward_original_token=True,
                timeout_ms=1500,
            ),
            JwtRule(issuer="local", jwks='{"keys": []}'),
        ),
    )


def test_request_authentication_bound_to_a_waypoint() -> None:
    auth = one(
        """
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: jwt, namespace: shop}
        spec:
          targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
          jwtRules: [{issuer: issuer}]
        """
    )
    assert isinstance(auth, RequestAuthentication)
    assert auth.selector is None
    assert auth.target_refs == (PolicyTargetRef(group=GW, kind="Gateway", name="waypoint"),)


# --- bad documents ---------------------------------------------------------------------------


def doc(kind: str, spec: dict[str, Any], api: str = f"{GW}/v1") -> dict[str, Any]:
    meta = {"name": "x"} if kind == "GatewayClass" else {"name": "x", "namespace": "shop"}
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


def gateway(*listeners: dict[str, Any], **listener: Any) -> dict[str, Any]:
    """A Gateway with ``listeners``, or one HTTP listener on port 80 with ``listener``."""
    first = {"name": "l", "port": 80, "protocol": "HTTP", **listener}
    return doc("Gateway", {"gatewayClassName": "c", "listeners": list(listeners or [first])})


def listener(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": "HTTP"}


def http(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return doc("HTTPRoute", {**({"rules": list(rules)} if rules else {}), **spec})


def grpc(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return doc("GRPCRoute", {"rules": list(rules), **spec})


def jwt(**rule: Any) -> dict[str, Any]:
    return doc("RequestAuthentication", {"jwtRules": [{"issuer": "i", **rule}]}, ISTIO)


SVC = {"name": "web", "port": 80}


def path_match(value: str, kind: str = "PathPrefix") -> dict[str, Any]:
    return {"matches": [{"path": {"type": kind, "value": value}}]}


def filters(*items: dict[str, Any], **rule: Any) -> dict[str, Any]:
    return {"filters": list(items), **rule}


REDIRECT = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}
REWRITE = {"type": "URLRewrite", "urlRewrite": {"hostname": "a.example"}}
PREFIX = {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}
EXACT = path_match("/a", "Exact")

# (document, the field the error names, a fragment of the reason)
BAD: list[tuple[dict[str, Any], str, str]] = [
    (doc("GatewayClass", {"controllerName": "e.com"}), "spec.controllerName", "a domain, '/'"),
    (doc("GatewayClass", {"controllerName": "e.com/x", "description": "d" * 65}),
     "spec.description", "at most 64"),
    (doc("GatewayClass", {"controller": "e.com/x"}), "spec.controller", "unknown field"),
    (doc("Gateway", {"gatewayClassName": "c", "listeners": []}), "spec.listeners", "at least one"),
    (doc("Gateway", {"listeners": [{"name": "l", "port": 80, "protocol": "HTTP"}]}),
     "spec.gatewayClassName", "required"),
    (gateway(port=0), "spec.listeners[0].port", "1-65535"),
    (gateway(protocol="HTTP/2"), "spec.listeners[0].protocol", "not a protocol"),
    (gateway(protocol="TCP", hostname="a.example"), "spec.listeners[0].hostname", "TCP"),
    (gateway(tls={"mode": "Terminate"}), "spec.listeners[0].tls", "protocol HTTP"),
    (gateway(protocol="HTTPS", tls={"mode": "Passthrough"}), "spec.listeners[0].tls.mode",
     "Terminate for protocol HTTPS"),
    (gateway(protocol="HTTPS", tls={}), "spec.listeners[0].tls", "needs certificateRefs"),
    (gateway(hostname="Shop.example"), "spec.listeners[0].hostname", "not a hostname"),
    (gateway(hostname="10.0.0.1"), "spec.listeners[0].hostname", "not an IP address"),
    (gateway(allowedRoutes={"namespaces": {"from": "Everywhere"}}),
     "spec.listeners[0].allowedRoutes.namespaces.from", "All, Same or Selector"),
    (gateway(allowedRoutes={"namespaces": {"selector": {"matchExpressions": []}}}),
     "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions", "not supported"),
    (gateway(listener("l", 80), listener("l", 81)),
     "spec.listeners[1].name", "also the name of spec.listeners[0]"),
    (gateway(listener("a", 80), listener("b", 80)),
     "spec.listeners[1]", "same port, protocol and hostname"),
    (doc("Gateway", {"gatewayClassName": "c", "addresses": [{"value": "not-an-ip"}],
                     "listeners": [{"name": "l", "port": 80, "protocol": "HTTP"}]}),
     "spec.addresses[0].value", "not an IP address"),
    (http(parentRefs=[{"name": f"g{i}"} for i in range(33)]), "spec.parentRefs", "at most 32"),
    (http(parentRefs=[{"name": "g"}, {"name": "g", "sectionName": "a"}]), "spec.parentRefs[1]",
     "set sectionName (or port) on every reference"),
    (http(parentRefs=[{"name": "g", "port": 80}, {"name": "g", "port": 80}]), "spec.parentRefs[1]",
     "the same parent and section"),
    (http(parentRefs=[{"name": "g", "kind": "Gate/way"}]), "spec.parentRefs[0].kind", "not a kind"),
    (http(hostnames=[f"h{i}.example" for i in range(17)]), "spec.hostnames", "at most 16"),
    (http(hostnames=["*"]), "spec.hostnames[0]", "not a hostname"),
    (http(*[{} for _ in range(17)]), "spec.rules", "at most 16"),
    (http({"matches": [{"method": "GET"}] * 65}), "spec.rules[0].matches", "at most 64"),
    (http(*[{"matches": [{"method": "GET"}] * 60}] * 3), "spec.rules", "at most 128"),
    (http(path_match("api")), "spec.rules[0].matches[0].path.value", "must start with '/'"),
    (http(path_match("/a//b", "Exact")), "spec.rules[0].matches[0].path.value", "'//'"),
    (http(path_match("/a/..")), "spec.rules[0].matches[0].path.value", "must not end with"),
    (http(path_match("/a b")), "spec.rules[0].matches[0].path.value", "percent-encode"),
    (http(path_match("/a", "Prefix")), "spec.rules[0].matches[0].path.type", "must be Exact"),
    (http({"matches": [{"method": "get"}]}), "spec.rules[0].matches[0].method", "must be one of"),
    (http({"matches": [{"headers": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}]}),
     "spec.rules[0].matches[0].headers[1]", "appears twice"),
    (http({"matches": [{"headers": [{"name": "a:b", "value": "1"}]}]}),
     "spec.rules[0].matches[0].headers[0].name", "not a header name"),
    (http({"backendRefs": [{"name": "web"}]}), "spec.rules[0].backendRefs[0].port",
     "required for a Service"),
    (http({"backendRefs": [{**SVC, "weight": 1_000_001}]}), "spec.rules[0].backendRefs[0].weight",
     "0-1,000,000"),
    (http({"backendRefs": [SVC] * 17}), "spec.rules[0].backendRefs", "at most 16"),
    (http({"backendRef": [SVC]}), "spec.rules[0].backendRef", "unknown field"),
    (http({"timeouts": {"request": "1d"}}), "spec.rules[0].timeouts.request", "not a duration"),
    (http({"retry": {"codes": [600]}}), "spec.rules[0].retry.codes[0]", "400-599"),
    (http({"retry": {"codes": ["503"]}}), "spec.rules[0].retry.codes[0]", "integer"),
    (http({"retry": {"codes": [503], "attempts": -1}}), "spec.rules[0].retry.attempts", "0-10"),
    (http({"retry": {"codes": [503], "attempts": 11}}), "spec.rules[0].retry.attempts", "0-10"),
    (http({"retry": {"codes": [503], "backoff": "soon"}}), "spec.rules[0].retry.backoff",
     "not a duration"),
    (http({"retry": {"codes": [503], "perTryTimeout": "1s"}}), "spec.rules[0].retry.perTryTimeout",
     "unknown field"),
    (grpc({"retry": {"codes": [17]}}), "spec.rules[0].retry.codes[0]", "0-16"),
    (grpc({"retry": {"codes": ["SOON"]}}), "spec.rules[0].retry.codes[0]", "not a gRPC status"),
    (http({"timeouts": {"request": "1s", "backendRequest": "2s"}}),
     "spec.rules[0].timeouts.backendRequest", "longer than the request timeout"),
    (http(filters(REDIRECT, backendRefs=[SVC])), "spec.rules[0].filters", "cannot be used"),
    (http(filters(REWRITE, REWRITE)), "spec.rules[0].filters[1]", "only once"),
    (http(filters(REWRITE, REDIRECT)), "spec.rules[0].filters", "not both"),
    (http(filters({"type": "URLRewrite", "urlRewrite": {"path": PREFIX}}, **EXACT)),
     "spec.rules[0].matches", "exactly one PathPrefix"),
    (http(filters({"type": "URLRewrite", "requestRedirect": {}})),
     "spec.rules[0].filters[0].requestRedirect", "must not be set in a URLRewrite"),
    (http(filters({"type": "URLRewrite"})), "spec.rules[0].filters[0].urlRewrite", "required"),
    (http(filters({"type": "Lua", "lua": {}})), "spec.rules[0].filters[0].lua", "unknown field"),
    (http(filters({"type": "RequestRedirect", "requestRedirect": {"statusCode": 300}})),
     "spec.rules[0].filters[0].requestRedirect.statusCode", "301, 302"),
    (http(filters({"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath"}}})),
     "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath", "required"),
    (http(filters({"type": "RequestMirror", "requestMirror": {"backendRef": SVC, "percent": 101}})),
     "spec.rules[0].filters[0].requestMirror.percent", "0-100"),
    (http(filters({"type": "RequestMirror", "requestMirror": {"backendRef": SVC,
                   "fraction": {"numerator": 3, "denominator": 2}}})),
     "spec.rules[0].filters[0].requestMirror.fraction", "not be greater"),
    (http(filters({"type": "CORS", "cors": {"allowOrigins": ["ftp://x.com"]}})),
     "spec.rules[0].filters[0].cors.allowOrigins[0]", "scheme://host"),
    (http(filters({"type": "CORS", "cors": {"allowMethods": ["*", "GET"]}})),
     "spec.rules[0].filters[0].cors.allowMethods", "beside other entries"),
    (http(filters({"type": "CORS", "cors": {"allowMethods": ["get"]}})),
     "spec.rules[0].filters[0].cors.allowMethods[0]", "must be '*' or one of"),
    (http(filters({"type": "CORS", "cors": {"maxAge": 0}})),
     "spec.rules[0].filters[0].cors.maxAge", "integer 1-"),
    (http(filters({"type": "CORS", "cors": {"allowCredentials": "yes"}})),
     "spec.rules[0].filters[0].cors.allowCredentials", "true or false"),
    (http({"name": "a"}, {"name": "a"}), "spec.rules[1].name", "another rule"),
    (grpc({"matches": [{"method": {"type": "Exact"}}]}), "spec.rules[0].matches[0].method",
     "service, method or both"),
    (grpc({"matches": [{"method": {"service": "hello/world"}}]}),
     "spec.rules[0].matches[0].method.service", "not a gRPC service name"),
    (grpc({"matches": [{}] * 9}), "spec.rules[0].matches", "at most 8"),
    (grpc(filters(REDIRECT)), "spec.rules[0].filters[0].requestRedirect", "unknown field"),
    (jwt(issuer=""), "spec.jwtRules[0].issuer", "must not be empty"),
    (jwt(jwksUri="file:///etc/keys"), "spec.jwtRules[0].jwksUri", "http:// or https://"),
    (jwt(jwksUri="https://[::1/keys"), "spec.jwtRules[0].jwksUri", "http:// or https://"),
    (jwt(jwksURI="https://x"), "spec.jwtRules[0].jwksURI", "unknown field"),
    (jwt(fromHeaders=[{"prefix": "Bearer "}]), "spec.jwtRules[0].fromHeaders[0].name", "required"),
    (jwt(outputClaimToHeaders=[{"header": "x y", "claim": "sub"}]),
     "spec.jwtRules[0].outputClaimToHeaders[0].header", "not a header name"),
    (jwt(timeout="0s"), "spec.jwtRules[0].timeout", "shorter than 1ms"),
    (jwt(forwardOriginalToken="yes"), "spec.jwtRules[0].forwardOriginalToken", "true or false"),
    (doc("RequestAuthentication", {"selector": {"matchLabels": {"a": "b"}},
                                   "targetRefs": [{"kind": "Service", "name": "web"}]}, ISTIO),
     "spec.targetRefs", "not both"),
]  # fmt: skip


@pytest.mark.parametrize(("document", "field", "reason"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_document_names_its_field(document: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_object(copy.deepcopy(document), "routes.yaml: document 1")
    message = str(info.value)
    kind = document["kind"]
    name = "x" if kind == "GatewayClass" else "shop/x"
    assert message.startswith(f"routes.yaml: document 1 ({kind} {name}): {field}: "), message
    assert reason in message, message


def test_gateway_api_versions_are_checked() -> None:
    with pytest.raises(ManifestError, match=r"use gateway\.networking\.k8s\.io/v1$"):
        parse_object(grpc({}) | {"apiVersion": f"{GW}/v1alpha2"})
