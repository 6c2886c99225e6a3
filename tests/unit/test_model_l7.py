"""The L7 half of the model: waypoints, routes and RequestAuthentications in the snapshot,
their JSON round trips, and diff / apply over them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh.jsonform import ModelError
from mesh.model import (
    Delta,
    MeshSnapshot,
    RequestAuthentication,
    TargetRef,
    Workload,
    apply,
    diff,
)
from mesh.model_l7 import (
    BackendRef,
    ClaimToHeader,
    Filter,
    Gateway,
    GatewayAddress,
    GrpcMatch,
    GrpcRoute,
    GrpcRule,
    HeaderMatch,
    HeaderModifier,
    HttpMatch,
    HttpRoute,
    HttpRule,
    JwtHeader,
    JwtRule,
    Listener,
    Mirror,
    ParentRef,
    PathModifier,
    Redirect,
    RouteGroupKind,
    UrlRewrite,
)
from tests.builders import service, snapshot, waypoint_ref, workload

GW = "gateway.networking.k8s.io"
WAYPOINT = Gateway(
    "waypoint",
    "shop",
    "istio-waypoint",
    (Listener("mesh", 15008, "HBONE"),),
    (GatewayAddress("IPAddress", "10.96.9.9"),),
    "all",
)
EDGE = Gateway(
    "edge",
    "infra",
    "ambit-waypoint",
    (
        Listener("web", 443, "HTTPS", "*.example.com", "Terminate", "Selector",
                 (("shared", "yes"),), (RouteGroupKind(GW, "HTTPRoute"),)),
    ),
)  # fmt: skip
CANARY = HttpRoute(
    "reviews",
    "shop",
    (ParentRef("", "Service", "reviews", port=9080),),
    ("reviews.example.com",),
    (
        HttpRule(
            (HttpMatch("Exact", "/api", (HeaderMatch("x-canary", "1"),), (), "GET"),),
            (
                Filter("RequestHeaderModifier", request_headers=HeaderModifier((("a", "b"),))),
                Filter("URLRewrite", rewrite=UrlRewrite("", PathModifier("ReplaceFullPath", "/"))),
                Filter("RequestMirror", mirror=Mirror(BackendRef("shadow", 80), 1, 10)),
                Filter("ExtensionRef"),
            ),
            (BackendRef("reviews-v2", 9080, weight=10, filters=(Filter("CORS"),)),),
            timeout_ms=10_000,
            backend_timeout_ms=0,
            name="canary",
        ),
        HttpRule(
            filters=(Filter("RequestRedirect", redirect=Redirect("https", port=443)),),
        ),
    ),
    "2026-12-06T10:00:00Z",
)
ENV = HeaderMatch("env", "c.*", "RegularExpression")
GREETER = GrpcRoute(
    "greeter",
    "shop",
    (ParentRef(GW, "Gateway", "edge", "infra", "web"),),
    (),
    (
        GrpcRule(
            (GrpcMatch("Exact", "hello.Greeter", "SayHello", (ENV,)),),
            backends=(BackendRef("greeter", 50051),),
        ),
        GrpcRule(),
    ),
)
JWT = RequestAuthentication(
    "jwt",
    "shop",
    (("app", "web"),),
    (
        JwtRule(
            "https://issuer.example.com",
            ("shop",),
            "https://issuer.example.com/keys",
            "",
            (JwtHeader("x-jwt", "Token "),),
            ("token",),
            ("session",),
            "x-jwt-payload",
            (ClaimToHeader("x-sub", "sub"),),
            True,
            1500,
        ),
        JwtRule("local", jwks='{"keys": []}'),
    ),
)
AT_WAYPOINT = RequestAuthentication(
    "jwt-at-waypoint", "shop", None, (JwtRule("i"),), (waypoint_ref("waypoint"),)
)
WEB = workload("web", "shop", waypoint="shop/waypoint")
VALUES = [
    WAYPOINT,
    EDGE,
    CANARY,
    GREETER,
    HttpRoute("bare", "shop", ()),
    JWT,
    AT_WAYPOINT,
    WEB,
    MeshSnapshot(3, (WEB,), (), (), (), (JWT,), (EDGE, WAYPOINT), (CANARY,), (GREETER,)),
    Delta(1, 2, (WAYPOINT, CANARY, JWT), (("grpc_route", "shop/greeter"),)),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_json_round_trip_is_exact(value: Any) -> None:
    text = json.dumps(value.to_json())
    back = type(value).from_json(json.loads(text))
    assert back == value
    assert json.dumps(back.to_json()) == text


def test_json_shapes() -> None:
    route = CANARY.to_json()
    assert route["parents"] == [
        {"group": "", "kind": "Service", "name": "reviews", "namespace": "", "section_name": "",
         "port": 9080},
    ]  # fmt: skip
    first = route["rules"][0]
    assert first["filters"][0]["request_headers"] == {"set": {"a": "b"}, "add": {}, "remove": []}
    assert first["filters"][3] == {
        "type": "ExtensionRef", "request_headers": None, "response_headers": None,
        "redirect": None, "rewrite": None, "mirror": None, "cors": None, "extension": None,
    }  # fmt: skip
    assert (first["timeout_ms"], first["backend_timeout_ms"]) == (10_000, 0)
    assert route["rules"][1]["timeout_ms"] is None
    assert JWT.to_json()["jwt_rules"][0]["forward_original_token"] is True
    assert WEB.to_json()["waypoint"] == "shop/waypoint"
    assert workload().to_json()["waypoint"] is None
    snap = MeshSnapshot(1).to_json()
    assert list(snap) == [
        "version", "workloads", "services", "authorizations", "peer_authentications",
        "request_authentications", "gateways", "http_routes", "grpc_routes",
        "destination_rules", "backend_traffic_policies", "fault_injections", "local_rate_limits",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (JwtRule, {**JwtRule("i").to_json(), "forward_original_token": "yes"}, "true or false"),
        (JwtRule, {**JwtRule("i").to_json(), "issuer": ""}, "issuer is empty"),
        (Gateway, {**WAYPOINT.to_json(), "for_traffic": "some"}, "'some' is not one of"),
        (BackendRef, {**BackendRef("a", 80).to_json(), "weight": 1_000_001}, "weight"),
        (BackendRef, {**BackendRef("a", 80).to_json(), "port": 70000}, "port 70000"),
        (Filter, {**Filter("CORS").to_json(), "type": "Lua"}, "'Lua' is not one of"),
        (Mirror, {**Mirror(BackendRef("a", 1)).to_json(), "numerator": 101}, "fraction"),
        (Listener, {**Listener("l", 80, "HTTP").to_json(), "allowed_from": "Any"}, "'Any'"),
        (Workload, {**WEB.to_json(), "waypoint": "waypoint"}, "not namespace/name"),
        (HttpMatch, {**HttpMatch().to_json(), "path_type": "Prefix"}, "'Prefix' is not one of"),
    ],
)
def test_bad_json_is_refused(cls: Any, data: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        cls.from_json(data)


def test_a_waypoint_takes_the_traffic_it_is_for() -> None:
    def takes(for_traffic: str) -> tuple[bool, bool]:
        gateway = Gateway("w", "shop", "istio-waypoint", (), for_traffic=for_traffic)  # type: ignore[arg-type]
        return gateway.takes("service"), gateway.takes("workload")

    assert takes("service") == (True, False)
    assert takes("workload") == (False, True)
    assert takes("all") == (True, True)
    assert takes("none") == (False, False)


def test_request_authentication_takes_a_selector_or_target_refs() -> None:
    assert not AT_WAYPOINT.selector
    with pytest.raises(ModelError, match="selector or target refs, not both"):
        RequestAuthentication("x", "shop", (("a", "b"),), (), (TargetRef("", "Service", "web"),))


def test_snapshot_lookups_and_keys() -> None:
    snap = MeshSnapshot(1, gateways=(WAYPOINT, EDGE), http_routes=(CANARY,))
    assert [g.key for g in snap.gateways] == ["infra/edge", "shop/waypoint"]
    assert snap.gateway("shop/waypoint") is WAYPOINT
    assert snap.gateway("shop/nope") is None
    with pytest.raises(ModelError, match="two http_routes with key shop/reviews"):
        MeshSnapshot(1, http_routes=(CANARY, CANARY))


def test_diff_and_apply_cover_the_l7_kinds() -> None:
    old = snapshot(WEB, service("waypoint", "shop", backends=[WEB]), version=1)
    old = MeshSnapshot(1, old.workloads, old.services, gateways=(WAYPOINT,),
                       http_routes=(CANARY,), grpc_routes=(GREETER,))  # fmt: skip
    moved = HttpRoute(CANARY.name, CANARY.namespace, CANARY.parents, rules=CANARY.rules[:1])
    new = MeshSnapshot(2, old.workloads, old.services, request_authentications=(JWT,),
                       gateways=(WAYPOINT, EDGE), http_routes=(moved,))  # fmt: skip
    delta = diff(old, new)
    assert [(r.kind, r.key) for r in delta.upserts] == [
        ("gateway", "infra/edge"),
        ("http_route", "shop/reviews"),
        ("request_authentication", "shop/jwt"),
    ]
    assert delta.removes == (("grpc_route", "shop/greeter"),)
    wire = Delta.from_json(json.loads(json.dumps(delta.to_json())))
    assert apply(old, wire) == new
    assert diff(new, new) == Delta(2, 2)
