"""The mesh model: values, lookups, JSON round trips, and diff / apply of snapshots."""

from __future__ import annotations

import ipaddress
import json
import random
from typing import Any

import pytest

from mesh.constants import SYSTEM_NAMESPACE
from mesh.identity import SpiffeId
from mesh.jsonform import ModelError
from mesh.model import (
    Authorization,
    Condition,
    Delta,
    Endpoint,
    MeshSnapshot,
    Operation,
    PeerAuthentication,
    Rule,
    Service,
    ServicePort,
    Source,
    TargetRef,
    Workload,
    apply,
    diff,
)
from mesh.model_checks import _parses_as_ip
from tests.builders import (
    allow,
    deny,
    op,
    peer_auth,
    rule,
    service,
    snapshot,
    source,
    waypoint_ref,
    workload,
)

# --- values ----------------------------------------------------------------------------------


def test_workload_identity_and_labels() -> None:
    w = workload("web", "shop", sa="web-sa", labels={"app": "web", "version": "v2"})
    assert w.identity == SpiffeId("cluster.local", "shop", "web-sa")
    assert str(w.identity) == "spiffe://cluster.local/ns/shop/sa/web-sa"
    assert w.label("version") == "v2"
    assert w.label("missing") is None
    assert w.meshed
    assert not workload(meshed=False).meshed


def test_workload_uses_its_trust_domain() -> None:
    w = workload(trust_domain="example.org")
    assert w.identity.trust_domain == "example.org"


def test_label_order_does_not_matter() -> None:
    a = workload(labels={"a": "1", "b": "2"})
    b = workload(labels={"b": "2", "a": "1"})
    assert a == b
    assert hash(a) == hash(b)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ip": "10.0.0"}, "not an IP address"),
        ({"protocol": "UDP"}, "protocol"),
        ({"service_account": "Bad_SA"}, "service account"),
        ({"container_ports": (("http", 0),)}, "container port http"),
    ],
)
def test_workload_rejects_bad_values(changes: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "uid": "default/web",
        "name": "web",
        "namespace": "default",
        "service_account": "web",
        "node": "n",
        "ip": "10.0.0.1",
        "labels": (),
        "protocol": "HBONE",
    }
    with pytest.raises(ModelError, match=message):
        Workload(**(fields | changes))


def test_service_hostname_and_ports() -> None:
    svc = service("web", "shop", ports={443: 8443, 80: 8080})
    assert svc.hostname == "web.shop.svc.cluster.local"
    assert [p.port for p in svc.ports] == [80, 443]
    port = svc.port(443)
    assert port is not None
    assert port.target_port == 8443
    assert svc.port(8080) is None


def test_service_port_needs_exactly_one_target() -> None:
    assert ServicePort(80, 0, target_port_name="http").target_port_name == "http"
    with pytest.raises(ModelError, match="exactly one"):
        ServicePort(80, 0)
    with pytest.raises(ModelError, match="exactly one"):
        ServicePort(80, 8080, target_port_name="http")
    with pytest.raises(ModelError, match="1-65535"):
        ServicePort(70000, 80)


def test_endpoint_maps_service_port_to_target() -> None:
    ep = Endpoint("default/web", "10.0.0.1", ((443, 8443), (80, 8080)))
    assert ep.target_for(80) == 8080
    assert ep.target_for(443) == 8443
    assert ep.target_for(8080) is None


def test_source_rejects_bad_ip_block() -> None:
    assert Source(ip_blocks=("10.0.0.0/8", "192.168.1.1")).ip_blocks
    with pytest.raises(ModelError, match=r"10\.0\.0\.0/33"):
        Source(not_ip_blocks=("10.0.0.0/33",))


def test_policy_values_are_checked() -> None:
    with pytest.raises(ModelError, match="action"):
        Authorization("p", "default", "CUSTOM", None, ())  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="mode"):
        PeerAuthentication("p", "default", None, "STRICTER")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="port"):
        Operation(ports=(0,))


def test_rule_lists_its_l7_fields_once() -> None:
    r = rule(
        [source(request_principals=["issuer/sub"]), source(principals=["*"])],
        [op(80, methods=["GET"]), op(not_paths=["/x"], methods=["POST"])],
        when={"request.headers[x-user]": ["me"]},
    )
    assert r.sources[0].l7 == ("requestPrincipals",)
    assert r.sources[1].l7 == ()
    assert r.operations[1].l7 == ("methods", "notPaths")
    assert r.l7 == ("requestPrincipals", "methods", "notPaths", "when:request.headers[x-user]")
    assert rule().l7 == ()
    assert rule([source(principals=["*"])], [op(80, not_ports=[22])]).l7 == ()


def test_every_l7_field_is_named_in_istio_words() -> None:
    every = Source(
        request_principals=("a",),
        not_request_principals=("b",),
        remote_ip_blocks=("10.0.0.0/8",),
        not_remote_ip_blocks=("10.1.0.0/16",),
    )
    assert every.l7 == (
        "requestPrincipals",
        "notRequestPrincipals",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
    )
    operation = Operation(
        hosts=("a",), not_hosts=("b",), methods=("GET",), not_methods=("PUT",), paths=("/",),
        not_paths=("/x",),
    )  # fmt: skip
    assert operation.l7 == ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def test_remote_ip_blocks_are_checked_like_ip_blocks() -> None:
    with pytest.raises(ModelError, match=r"'10\.0\.0\.0/33'"):
        Source(remote_ip_blocks=("10.0.0.0/33",))
    with pytest.raises(ModelError, match="'nope'"):
        Source(not_remote_ip_blocks=("nope",))


def test_condition_needs_a_key_and_values() -> None:
    assert Condition("source.ip", not_values=("10.0.0.1",)).not_values == ("10.0.0.1",)
    with pytest.raises(ModelError, match="key is empty"):
        Condition("", ("x",))
    with pytest.raises(ModelError, match=r"condition request\.headers\[x\]: give values"):
        Condition("request.headers[x]")


# --- snapshot lookups ------------------------------------------------------------------------

WEB = workload("web", ip="10.0.0.1", node="node-1")
DB = workload("db", ip="10.0.0.2", node="node-2", labels={"app": "db", "tier": "data"})
OTHER = workload("web", "other", ip="10.0.1.1", node="node-1")


def test_snapshot_sorts_entries_by_key() -> None:
    snap = snapshot(WEB, DB, OTHER, service("b"), service("a", vip="10.96.0.11"))
    assert [w.uid for w in snap.workloads] == ["default/db", "default/web", "other/web"]
    assert [s.name for s in snap.services] == ["a", "b"]


def test_snapshot_refuses_duplicate_keys() -> None:
    with pytest.raises(ModelError, match="two workloads with key default/web"):
        snapshot(WEB, workload("web", ip="10.0.0.5"))


def test_snapshot_refuses_duplicate_keys_given_in_order() -> None:
    with pytest.raises(ModelError, match="two workloads with key default/web"):
        MeshSnapshot(1, (DB, WEB, workload("web", ip="10.0.0.5")))


def test_snapshot_keeps_entries_given_in_order() -> None:
    entries = (DB, WEB, OTHER)
    assert MeshSnapshot(1, entries).workloads is entries


def test_a_restricted_snapshot_keeps_what_is_not_given_and_checks_what_is() -> None:
    snap = snapshot(WEB, DB, OTHER, service("a"), allow("p"), version=3)
    view = snap.restricted(workloads=[OTHER, WEB], authorizations=[])
    assert view.version == 3
    assert view.services is snap.services  # kept whole: the same tuple, not checked again
    assert view == snapshot(WEB, OTHER, service("a"), version=3)  # given ones sorted
    assert view.workload_by_ip(OTHER.ip) is OTHER
    with pytest.raises(ModelError, match="two workloads with key default/web"):
        snap.restricted(workloads=[WEB, WEB])


def test_snapshot_lookups() -> None:
    svc = service(vip="10.96.0.1", backends=[WEB])
    snap = snapshot(WEB, DB, OTHER, svc)
    assert snap.workload_by_ip("10.0.0.2") == DB
    assert snap.workload_by_ip("10.9.9.9") is None
    assert snap.workload("other/web") == OTHER
    assert snap.service_by_vip("10.96.0.1") == svc
    assert snap.service_by_vip("10.0.0.1") is None
    assert snap.workloads_on_node("node-1") == (WEB, OTHER)
    assert snap.workloads_on_node("node-9") == ()


def test_policies_for_selects_by_namespace_and_labels() -> None:
    ns_wide = allow("ns-wide")
    for_db = deny("for-db", selector={"tier": "data"})
    other_ns = allow("other", namespace="other")
    mesh_wide = allow("mesh", namespace=SYSTEM_NAMESPACE)
    mesh_db = deny("mesh-db", namespace=SYSTEM_NAMESPACE, selector={"app": "db"})
    snap = snapshot(ns_wide, for_db, other_ns, mesh_wide, mesh_db)
    assert snap.policies_for(WEB) == (mesh_wide, ns_wide)
    assert snap.policies_for(DB) == (mesh_wide, mesh_db, for_db, ns_wide)
    assert snap.policies_for(OTHER) == (mesh_wide, other_ns)


def test_policies_for_leaves_out_what_only_a_waypoint_enforces() -> None:
    ns_wide = allow("ns-wide")
    at_gateway = allow("at-gateway", targets=[waypoint_ref()])
    at_service = deny("at-service", rule(), targets=[TargetRef("", "Service", "web")])
    audit = Authorization("audit", "default", "AUDIT", None, (rule(),))
    mesh_audit = Authorization("audit", SYSTEM_NAMESPACE, "AUDIT", (("app", "web"),), ())
    snap = snapshot(ns_wide, at_gateway, at_service, audit, mesh_audit)
    assert snap.policies_for(WEB) == (ns_wide,)
    assert [p.for_waypoint for p in (ns_wide, at_gateway, at_service, audit, mesh_audit)] == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert not any(p.applies_to(WEB) for p in (at_gateway, at_service, audit, mesh_audit))


def test_target_refs_are_checked() -> None:
    assert TargetRef("networking.istio.io", "ServiceEntry", "ext").kind == "ServiceEntry"
    with pytest.raises(ModelError, match="target apps/Deployment: not one of"):
        TargetRef("apps", "Deployment", "web")
    with pytest.raises(ModelError, match="target /Gateway: not one of"):
        TargetRef("", "Gateway", "waypoint")
    with pytest.raises(ModelError, match="target Service: the name is empty"):
        TargetRef("", "Service", "")
    with pytest.raises(ModelError, match="give a selector or target refs, not both"):
        Authorization("p", "default", "ALLOW", (("app", "web"),), (), (waypoint_ref(),))


def test_peer_authentication_for_most_specific_first() -> None:
    mesh = peer_auth("mesh", "STRICT", namespace=SYSTEM_NAMESPACE)
    mesh_selected = peer_auth(
        "mesh-sel", "DISABLE", namespace=SYSTEM_NAMESPACE, selector={"a": "b"}
    )
    ns = peer_auth("ns", "PERMISSIVE")
    db_only = peer_auth("db-only", "DISABLE", selector={"app": "db"})
    other = peer_auth("other", "DISABLE", namespace="other")
    snap = snapshot(mesh, mesh_selected, ns, db_only, other)
    assert snap.peer_authentication_for(DB) == (db_only, ns, mesh)
    assert snap.peer_authentication_for(WEB) == (ns, mesh)
    assert snap.peer_authentication_for(OTHER) == (other, mesh)
    system = workload("cp", SYSTEM_NAMESPACE, ip="10.0.9.1")
    assert snap.peer_authentication_for(system) == (mesh,)


# --- JSON ------------------------------------------------------------------------------------

POLICY = Authorization(
    "p",
    "default",
    "DENY",
    (("app", "web"),),
    (
        Rule(
            (Source(principals=("cluster.local/ns/a/sa/*",), not_ip_blocks=("10.0.0.0/8",)),),
            (Operation(ports=(80, 443), methods=("POST",)),),
        ),
        Rule(),
    ),
)
L7_POLICY = Authorization(
    "l7",
    "default",
    "ALLOW",
    None,
    (
        Rule(
            (
                Source(
                    principals=("cluster.local/ns/a/sa/client",),
                    request_principals=("https://issuer/sub",),
                    not_request_principals=("https://issuer/banned",),
                    remote_ip_blocks=("203.0.113.0/24",),
                    not_remote_ip_blocks=("203.0.113.7",),
                ),
            ),
            (
                Operation(
                    ports=(8080,),
                    hosts=("web.example.com",),
                    not_hosts=("admin.example.com",),
                    methods=("GET", "HEAD"),
                    not_methods=("DELETE",),
                    paths=("/api/*",),
                    not_paths=("/api/internal*",),
                ),
            ),
            (
                Condition("request.headers[x-tenant]", ("a", "b")),
                Condition("request.auth.claims[group]", (), ("guests",)),
            ),
        ),
    ),
)
NAMED = Service(
    "web",
    "default",
    "10.96.0.10",
    (ServicePort(80, 0, "http", "TCP", "http", "http"), ServicePort(5432, 5432)),
    (Endpoint("default/web", "10.0.0.1", ((80, 8080),)),),
)
AT_WAYPOINTS = Authorization(
    "at-waypoints",
    "default",
    "DENY",
    None,
    (Rule(operations=(Operation(methods=("DELETE",)),)),),
    (waypoint_ref("waypoint"), TargetRef("", "Service", "web")),
)
VALUES = [
    workload(named_ports={"http": 8080, "admin": 9000}),
    workload(meshed=False, labels={}),
    NAMED,
    POLICY,
    L7_POLICY,
    AT_WAYPOINTS,
    Authorization("audit", "default", "AUDIT", (("app", "api"),), (Rule(),)),
    Authorization("all", SYSTEM_NAMESPACE, "ALLOW", None, ()),
    peer_auth("strict", "STRICT", selector={"app": "web"}),
    peer_auth("unset", "UNSET"),
    snapshot(WEB, DB, NAMED, POLICY, peer_auth("ns", "STRICT"), version=7),
    MeshSnapshot(0),
    Delta(3, 4, (WEB, NAMED, POLICY), (("workload", "default/db"), ("service", "default/x"))),
    Delta(0, 1),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_json_round_trip_is_exact(value: Any) -> None:
    text = json.dumps(value.to_json())
    back = type(value).from_json(json.loads(text))
    assert back == value
    assert json.dumps(back.to_json()) == text


def test_json_shapes() -> None:
    data = NAMED.to_json()
    assert data["endpoints"][0]["ports"] == [[80, 8080]]
    assert [p["app_protocol"] for p in data["ports"]] == ["http", ""]
    assert workload(named_ports={"http": 8080}).to_json()["container_ports"] == {"http": 8080}
    assert POLICY.to_json()["selector"] == {"app": "web"}
    assert Authorization("all", "x", "ALLOW", None, ()).to_json()["selector"] is None
    delta = Delta(1, 2, (WEB,), (("workload", "default/db"),)).to_json()
    assert delta["upserts"] == [{"kind": "workload", "value": WEB.to_json()}]
    assert delta["removes"] == [["workload", "default/db"]]


def test_json_keeps_l7_values_but_not_their_names() -> None:
    data = L7_POLICY.to_json()
    (r,) = data["rules"]
    assert r["sources"][0]["request_principals"] == ["https://issuer/sub"]
    assert r["sources"][0]["not_remote_ip_blocks"] == ["203.0.113.7"]
    assert r["operations"][0]["methods"] == ["GET", "HEAD"]
    assert r["operations"][0]["not_paths"] == ["/api/internal*"]
    assert r["when"] == [
        {"key": "request.headers[x-tenant]", "values": ["a", "b"], "not_values": []},
        {"key": "request.auth.claims[group]", "values": [], "not_values": ["guests"]},
    ]
    assert "l7" not in r
    assert "l7" not in r["sources"][0]
    assert "l7" not in r["operations"][0]
    back = Authorization.from_json(json.loads(json.dumps(data)))
    assert back.rules[0].l7 == L7_POLICY.rules[0].l7
    assert back.rules[0].l7[-1] == "when:request.auth.claims[group]"


def test_json_of_target_refs() -> None:
    data = AT_WAYPOINTS.to_json()
    assert data["target_refs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"},
        {"group": "", "kind": "Service", "name": "web"},
    ]
    assert POLICY.to_json()["target_refs"] == []
    back = Authorization.from_json(json.loads(json.dumps(data)))
    assert back.for_waypoint
    assert back.target_refs[1] == TargetRef("", "Service", "web")


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (Workload, {**WEB.to_json(), "colour": "red"}, "Workload: unknown field colour"),
        (Workload, {k: v for k, v in WEB.to_json().items() if k != "ip"}, "missing field ip"),
        (Workload, {**WEB.to_json(), "protocol": "QUIC"}, "Workload.protocol: 'QUIC'"),
        (Workload, {**WEB.to_json(), "labels": {"a": 1}}, r"Workload.labels.a: expected str"),
        (Workload, [], "Workload: expected a JSON object"),
        (
            Service,
            {**NAMED.to_json(), "ports": [{"port": 80}]},
            r"ports\[0\]: missing field target_port",
        ),
        (
            Service,
            {**NAMED.to_json(), "ports": [{**NAMED.ports[0].to_json(), "port": "80"}]},
            r"Service.ports\[0\].port: expected int",
        ),
        (Service, {**NAMED.to_json(), "ports": {}}, "Service.ports: expected a list"),
        (
            Service,
            {**NAMED.to_json(), "endpoints": [{**NAMED.endpoints[0].to_json(), "ports": [[80]]}]},
            r"Service.endpoints\[0\].ports\[0\]: expected a two-element list",
        ),
        (Authorization, {**POLICY.to_json(), "selector": []}, "Authorization.selector"),
        (
            Authorization,
            {**POLICY.to_json(), "rules": [{"sources": [{"principal": ["x"]}]}]},
            r"Authorization.rules\[0\]: missing field operations",
        ),
        (
            Authorization,
            {**POLICY.to_json(), "rules": [{**POLICY.rules[0].to_json(), "when": {}}]},
            r"Authorization.rules\[0\].when: expected a list",
        ),
        (
            Authorization,
            {
                **POLICY.to_json(),
                "rules": [
                    {**POLICY.rules[0].to_json(), "when": [{"key": "source.ip", "values": []}]}
                ],
            },
            r"Authorization.rules\[0\].when\[0\]: missing field not_values",
        ),
        (
            Authorization,
            {
                **POLICY.to_json(),
                "rules": [
                    {
                        **POLICY.rules[0].to_json(),
                        "operations": [{**POLICY.rules[0].operations[0].to_json(), "l7": []}],
                    }
                ],
            },
            r"Authorization.rules\[0\].operations\[0\]: unknown field l7",
        ),
        (
            Authorization,
            {
                **L7_POLICY.to_json(),
                "rules": [
                    {
                        **L7_POLICY.rules[0].to_json(),
                        "sources": [
                            {**L7_POLICY.rules[0].sources[0].to_json(), "request_principals": "x"}
                        ],
                    }
                ],
            },
            r"Authorization.rules\[0\].sources\[0\].request_principals: expected a list",
        ),
        (
            Authorization,
            {
                **L7_POLICY.to_json(),
                "rules": [
                    {
                        **L7_POLICY.rules[0].to_json(),
                        "sources": [
                            {**L7_POLICY.rules[0].sources[0].to_json(), "methods": ["GET"]}
                        ],
                    }
                ],
            },
            r"Authorization.rules\[0\].sources\[0\]: unknown field methods",
        ),
        (
            Authorization,
            {k: v for k, v in AT_WAYPOINTS.to_json().items() if k != "target_refs"},
            "Authorization: missing field target_refs",
        ),
        (
            Authorization,
            {**AT_WAYPOINTS.to_json(), "target_refs": [{"kind": "Gateway", "name": "w"}]},
            r"Authorization.target_refs\[0\]: missing field group",
        ),
        (
            Authorization,
            {
                **AT_WAYPOINTS.to_json(),
                "target_refs": [{"group": "", "kind": "Service", "name": "w", "port": 80}],
            },
            r"Authorization.target_refs\[0\]: unknown field port",
        ),
        (
            Authorization,
            {**AT_WAYPOINTS.to_json(), "action": "CUSTOM"},
            "Authorization.action: 'CUSTOM' is not one of ALLOW, DENY, AUDIT",
        ),
        (MeshSnapshot, {"version": 1}, "MeshSnapshot: missing field workloads"),
        (MeshSnapshot, {**MeshSnapshot(1).to_json(), "version": True}, "expected int"),
        (
            Delta,
            {"from_version": 1, "to_version": 2, "upserts": [{"kind": "pod", "value": {}}]},
            "missing field removes",
        ),
        (
            Delta,
            {
                "from_version": 1,
                "to_version": 2,
                "upserts": [{"kind": "pod", "value": {}}],
                "removes": [],
            },
            r"Delta.upserts\[0\].kind: 'pod' is not one of workload",
        ),
        (
            Delta,
            {
                "from_version": 1,
                "to_version": 2,
                "upserts": [{"kind": "service", "value": WEB.to_json()}],
                "removes": [],
            },
            r"Delta.upserts\[0\].value: unknown field",
        ),
        (
            Delta,
            {"from_version": 1, "to_version": 2, "upserts": [], "removes": [["pod", "x"]]},
            r"Delta.removes\[0\]: 'pod' is not one of",
        ),
    ],
)
def test_bad_json_names_the_path(cls: Any, data: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        cls.from_json(data)


def test_value_errors_from_json_are_model_errors() -> None:
    with pytest.raises(ModelError, match="not an IP address"):
        Workload.from_json({**WEB.to_json(), "ip": "nope"})
    empty = {"key": "source.ip", "values": [], "not_values": []}
    with pytest.raises(ModelError, match=r"condition source\.ip: give values"):
        Rule.from_json({**Rule().to_json(), "when": [empty]})


# --- diff / apply ----------------------------------------------------------------------------


def test_diff_names_what_changed() -> None:
    old = snapshot(WEB, DB, service(backends=[WEB]), version=1)
    moved = workload("web", ip="10.0.0.7")
    new = snapshot(moved, OTHER, service(backends=[moved]), allow("x"), version=2)
    delta = diff(old, new)
    assert (delta.from_version, delta.to_version) == (1, 2)
    assert [(r.kind, r.key) for r in delta.upserts] == [
        ("authorization", "default/x"),
        ("service", "default/web"),
        ("workload", "default/web"),
        ("workload", "other/web"),
    ]
    assert delta.removes == (("workload", "default/db"),)
    assert apply(old, delta) == new


def test_diff_of_equal_snapshots_is_empty() -> None:
    a = snapshot(WEB, DB, version=1)
    delta = diff(a, snapshot(DB, WEB, version=2))
    assert delta == Delta(1, 2)
    assert apply(a, delta) == snapshot(WEB, DB, version=2)


def test_diff_compares_by_value_what_is_not_shared() -> None:
    svc = service(backends=[WEB])
    old = snapshot(WEB, DB, svc, version=1)
    # The next snapshot shares DB and the Service, has an equal copy of WEB and a new OTHER.
    web_copy = workload("web", ip="10.0.0.1", node="node-1")
    assert web_copy is not WEB
    new = snapshot(web_copy, DB, OTHER, svc, version=2)
    delta = diff(old, new)
    assert delta.upserts == (OTHER,)
    assert delta.removes == ()
    assert apply(old, delta) == new
    assert diff(new, old).removes == (("workload", "other/web"),)


def test_apply_checks_the_version() -> None:
    with pytest.raises(ModelError, match=r"delta v1->v2 does not apply to snapshot v3"):
        apply(MeshSnapshot(3), Delta(1, 2))


def test_apply_refuses_to_remove_what_is_absent() -> None:
    with pytest.raises(ModelError, match="removes workload default/db"):
        apply(MeshSnapshot(1), Delta(1, 2, removes=(("workload", "default/db"),)))


def _random_snapshot(rng: random.Random, version: int) -> MeshSnapshot:
    names = ["a", "b", "c", "d", "e", "f"]
    namespaces = ["default", "shop", SYSTEM_NAMESPACE]
    workloads = {}
    for i, name in enumerate(rng.sample(names, rng.randint(0, len(names)))):
        ns = rng.choice(namespaces)
        workloads[f"{ns}/{name}"] = workload(
            name,
            ns,
            ip=f"10.0.{i}.{rng.randint(1, 3)}",
            node=rng.choice(["node-1", "node-2"]),
            labels={"app": rng.choice(names)},
            meshed=rng.random() < 0.7,
            named_ports=rng.choice([{}, {"http": 8080}]),
        )
    backends = list(workloads.values())
    services = [
        service(
            name,
            rng.choice(namespaces),
            vip=f"10.96.0.{i}",
            ports=rng.choice([{80: 8080}, {80: 8080, 443: 8443}]),
            backends=rng.sample(backends, rng.randint(0, len(backends))),
        )
        for i, name in enumerate(rng.sample(names, rng.randint(0, 3)))
    ]
    policies = [
        Authorization(
            name,
            rng.choice(namespaces),
            rng.choice(["ALLOW", "DENY"]),
            rng.choice([None, (("app", rng.choice(names)),)]),
            tuple(
                rule(
                    [source(principals=[f"cluster.local/ns/default/sa/{rng.choice(names)}"])],
                    [op(rng.randint(1, 3) * 1000)],
                )
                for _ in range(rng.randint(0, 2))
            ),
        )
        for name in rng.sample(names, rng.randint(0, 3))
    ]
    peers = [
        peer_auth(name, rng.choice(["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]))
        for name in rng.sample(names, rng.randint(0, 2))
    ]
    return snapshot(*workloads.values(), *services, *policies, *peers, version=version)


def test_apply_diff_gives_the_new_snapshot_on_varied_inputs() -> None:
    rng = random.Random(20240601)
    changed = 0
    for round_ in range(300):
        old = _random_snapshot(rng, round_)
        new = _random_snapshot(rng, round_ + 1) if rng.random() < 0.8 else old
        delta = diff(old, new)
        wire = Delta.from_json(json.loads(json.dumps(delta.to_json())))
        assert wire == delta
        assert apply(old, wire) == new
        changed += bool(delta.upserts or delta.removes)
    assert changed > 200  # the generator really varies things


def _ipaddress_says(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1", "0.0.0.0", "255.255.255.255", "256.0.0.1", "01.2.3.4", "1.2.3.04",
        "1.2.3", "1.2.3.4.5", "1.2.3.4\n", " 1.2.3.4", "1.2.3.4/32", "", "1..2.3",
        "\u0661.\u0662.\u0663.\u0664", "1.2.3.-4", "+1.2.3.4", "::1", "fe80::1%eth0",
        "::ffff:1.2.3.4", "10.0.0.1:80",
    ],
)  # fmt: skip
def test_addresses_are_checked_as_ipaddress_reads_them(text: str) -> None:
    assert _parses_as_ip(text) is _ipaddress_says(text)


def test_the_quick_ipv4_check_never_accepts_what_ipaddress_refuses() -> None:
    rng = random.Random(5)
    parts = ["0", "00", "1", "09", "10", "99", "100", "199", "249", "250", "255", "256", "999"]
    for _ in range(5000):
        text = ".".join(rng.choice(parts) for _ in range(rng.choice([3, 4, 4, 4, 5])))
        assert _parses_as_ip(text) is _ipaddress_says(text), text
