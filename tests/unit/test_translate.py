"""translate(): which pods are workloads and in the mesh, services and their endpoints,
and AuthorizationPolicy at L4."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from k8s import manifests as m
from k8s.translate import (
    Problem,
    Translator,
    in_mesh,
    meshed_by_labels,
    translate,
    ztunnel_acceptance,
)
from mesh.authz import evaluate
from mesh.model import (
    GATEWAY_GROUP,
    Authorization,
    Condition,
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
)
from tests.builders import conn, identity
from tests.k8s_builders import ns, pod, svc

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def assign_ips(objects: tuple[m.K8sObject, ...]) -> list[m.K8sObject]:
    """What local mode does before translating: pod IPs in order, service VIPs in order."""
    out: list[m.K8sObject] = []
    pods = services = 0
    for obj in objects:
        if isinstance(obj, m.Pod):
            pods += 1
            obj = obj.with_ip(f"10.44.0.{pods + 1}")
        elif isinstance(obj, m.Service):
            services += 1
            obj = obj.with_cluster_ip(f"10.96.0.{services + 9}")
        out.append(obj)
    return out


def test_demo_gives_the_expected_snapshot() -> None:
    snap = translate(assign_ips(m.load(DEMO)), version=3).snapshot
    server = Workload(
        uid="demo/server",
        name="server",
        namespace="demo",
        service_account="server",
        node="node-2",
        ip="10.44.0.2",
        labels=(("app", "server"),),
        protocol="HBONE",
        container_ports=(("http", 8080),),
    )
    client = Workload(
        uid="demo/client",
        name="client",
        namespace="demo",
        service_account="client",
        node="node-1",
        ip="10.44.0.3",
        labels=(("app", "client"),),
        protocol="HBONE",
    )
    svc = Service(
        "server",
        "demo",
        "10.96.0.10",
        (ServicePort(80, 8080, "http"),),
        (Endpoint("demo/server", "10.44.0.2", ((80, 8080),)),),
    )
    assert snap == MeshSnapshot(3, (client, server), (svc,))
    assert str(server.identity) == "spiffe://cluster.local/ns/demo/sa/server"


def protocols(snap: MeshSnapshot) -> dict[str, str]:
    return {w.uid: w.protocol for w in snap.workloads}


# --- workloads -------------------------------------------------------------------------------


def test_pods_without_an_ip_are_not_workloads_yet() -> None:
    snap = translate([pod("a"), pod("b", ip=None)], version=1).snapshot
    assert [w.uid for w in snap.workloads] == ["default/a"]


def test_host_network_and_finished_pods_are_skipped() -> None:
    snap = translate(
        [
            pod("host", ip="192.168.0.5", host_network=True),
            pod("done", ip="10.0.0.2", phase="Succeeded"),
            pod("failed", ip="10.0.0.3", phase="Failed"),
            pod("running", ip="10.0.0.4", phase="Running"),
        ],
        version=1,
    ).snapshot
    assert [w.name for w in snap.workloads] == ["running"]


def test_namespace_label_puts_pods_in_the_mesh() -> None:
    objs: list[m.K8sObject] = [
        ns("in"),
        ns("out", ambient=False),
        pod("a", "in", ip="10.0.0.1"),
        pod("b", "out", ip="10.0.0.2"),
        pod("c", "nowhere", ip="10.0.0.3"),
    ]
    assert protocols(translate(objs, version=1).snapshot) == {
        "in/a": "HBONE",
        "out/b": "TCP",
        "nowhere/c": "TCP",
    }


def test_pod_label_opts_in_and_out() -> None:
    objs: list[m.K8sObject] = [
        ns("in"),
        ns("out", ambient=False),
        pod("opt-out", "in", ip="10.0.0.1", labels={"ambit.io/dataplane-mode": "none"}),
        pod("opt-in", "out", ip="10.0.0.2", labels={"ambit.io/dataplane-mode": "ambient"}),
        pod("junk", "in", ip="10.0.0.3", labels={"ambit.io/dataplane-mode": "sidecar"}),
    ]
    assert protocols(translate(objs, version=1).snapshot) == {
        "in/opt-out": "TCP",
        "out/opt-in": "HBONE",
        "in/junk": "HBONE",
    }


@pytest.mark.parametrize(
    ("namespace_labels", "pod_labels", "meshed"),
    [
        ({"istio.io/dataplane-mode": "ambient"}, {}, True),
        ({}, {"istio.io/dataplane-mode": "ambient"}, True),
        ({"istio.io/dataplane-mode": "ambient"}, {"istio.io/dataplane-mode": "none"}, False),
        # Where both spellings are set, ambit's counts.
        ({"ambit.io/dataplane-mode": "none", "istio.io/dataplane-mode": "ambient"}, {}, False),
        ({}, {"ambit.io/dataplane-mode": "ambient", "istio.io/dataplane-mode": "none"}, True),
        ({"istio.io/dataplane-mode": "ambient"}, {"ambit.io/dataplane-mode": "none"}, False),
    ],
)
def test_istio_dataplane_mode_label_is_an_alias(
    namespace_labels: dict[str, str], pod_labels: dict[str, str], meshed: bool
) -> None:
    assert meshed_by_labels(pod_labels, namespace_labels) is meshed
    objs: list[m.K8sObject] = [
        ns("shop", ambient=False, labels=namespace_labels),
        pod("web", "shop", labels={"app": "web", **pod_labels}),
    ]
    assert protocols(translate(objs, version=1).snapshot) == {
        "shop/web": "HBONE" if meshed else "TCP"
    }


def test_a_namespace_labelled_with_istio_spelling_after_its_pods_exist_enrolls_them() -> None:
    translator = Translator()
    translator.apply([ns("shop", ambient=False), pod("web", "shop")])
    labelled = ns("shop", ambient=False, labels={"istio.io/dataplane-mode": "ambient"})
    snapshot = translator.apply([labelled]).snapshot
    assert protocols(snapshot) == {"shop/web": "HBONE"}


def test_workload_fields_come_from_the_pod() -> None:
    p = pod(
        "web",
        "shop",
        ip="10.0.0.7",
        ports={"http": 8080},
        node_name="node-3",
        service_account="web-sa",
    )
    (w,) = translate([p], trust_domain="example.org", version=1).snapshot.workloads
    assert (w.uid, w.node, w.ip, w.service_account) == ("shop/web", "node-3", "10.0.0.7", "web-sa")
    assert w.container_ports == (("http", 8080),)
    assert str(w.identity) == "spiffe://example.org/ns/shop/sa/web-sa"


# --- conflicts ------------------------------------------------------------------------------

EARLY, LATE = "2026-12-01T10:00:00Z", "2026-12-01T10:00:05Z"


def test_of_two_pods_with_one_ip_the_one_created_first_keeps_it() -> None:
    result = translate(
        [
            pod("new", ip="10.0.0.1", labels={"app": "web"}, created=LATE),
            pod("old", ip="10.0.0.1", labels={"app": "web"}, created=EARLY),
            pod("other", ip="10.0.0.2", labels={"app": "web"}, created=LATE),
            svc("web"),
        ],
        version=1,
    )
    # The pod created later is left out, as a workload and as an endpoint; the rest is there.
    snap = result.snapshot
    assert [w.uid for w in snap.workloads] == ["default/old", "default/other"]
    assert [e.workload_uid for e in snap.services[0].endpoints] == ["default/old", "default/other"]
    assert dict(result.problems) == {
        ("Pod", "default", "new"): (
            Problem(
                "IPConflict",
                "Pod default/old has the same pod IP 10.0.0.1 and was created first, so this Pod"
                " is left out of the mesh; delete whichever is stale, or find why the address"
                " was given twice",
            ),
        ),
        ("Pod", "default", "old"): (
            Problem(
                "IPConflictKept",
                "keeps pod IP 10.0.0.1, also claimed by Pod default/new (left out of the mesh"
                " while this Pod has it); delete whichever is stale, or find why the address"
                " was given twice",
            ),
        ),
    }


def test_pods_created_at_the_same_time_are_ordered_by_namespace_and_name() -> None:
    result = translate(
        [
            pod("b", "x", ip="10.0.0.1", created=EARLY),
            pod("a", "y", ip="10.0.0.1", created=EARLY),
            pod("c", "x", ip="10.0.0.1", created=EARLY),
        ],
        version=1,
    )
    assert [w.uid for w in result.snapshot.workloads] == ["x/b"]
    assert [p.reason for p in result.problems[("Pod", "x", "c")]] == ["IPConflict"]
    assert "comes first (creation times equal or unknown" in (
        result.problems[("Pod", "y", "a")][0].message
    )
    assert result.problems[("Pod", "x", "b")][0].message.startswith(
        "keeps pod IP 10.0.0.1, also claimed by Pod x/c, Pod y/a (left out"
    )


def test_a_pod_whose_creation_time_is_unknown_comes_after_one_whose_time_is_known() -> None:
    result = translate([pod("a", created=""), pod("b", created=LATE)], version=1)
    assert [w.name for w in result.snapshot.workloads] == ["b"]
    assert result.problems[("Pod", "default", "a")][0].reason == "IPConflict"


def test_creation_times_compare_as_times_not_text() -> None:
    result = translate(
        [pod("a", created="2026-12-01T10:00:00+01:00"), pod("b", created="2026-12-01T09:30:00Z")],
        version=1,
    )
    assert [w.name for w in result.snapshot.workloads] == ["a"]  # 09:00 UTC


def test_of_two_services_with_one_cluster_ip_the_one_created_first_keeps_it() -> None:
    result = translate(
        [
            pod("web", ip="10.0.0.1"),
            svc("b", selector={"app": "web"}, created=EARLY),
            svc("a", selector={"app": "web"}, created=LATE),
            svc("c", selector={"app": "web"}, cluster_ip="10.96.0.2", created=LATE),
        ],
        version=1,
    )
    assert [s.name for s in result.snapshot.services] == ["b", "c"]
    assert [w.name for w in result.snapshot.workloads] == ["web"]
    assert {ref: [p.reason for p in ps] for ref, ps in result.problems.items()} == {
        ("Service", "default", "a"): ["ClusterIPConflict"],
        ("Service", "default", "b"): ["ClusterIPConflictKept"],
    }
    assert result.problems[("Service", "default", "a")][0].message.startswith(
        "Service default/b has the same cluster IP 10.96.0.1 and was created first"
    )


def test_addresses_that_no_workload_or_service_uses_do_not_conflict() -> None:
    result = translate(
        [
            pod("running", ip="10.0.0.1"),
            pod("done", ip="10.0.0.1", phase="Succeeded"),
            pod("host", ip="10.0.0.1", host_network=True),
            svc("web", selector={"app": "running"}),
            svc("manual", selector={}, cluster_ip=None),  # headless: claims nothing
        ],
        version=1,
    )
    assert [w.name for w in result.snapshot.workloads] == ["running"]
    assert [s.name for s in result.snapshot.services] == ["web"]
    assert result.problems == {}


# --- services --------------------------------------------------------------------------------


def test_service_needs_a_vip_and_without_a_selector_has_its_slices_endpoints() -> None:
    objs: list[m.K8sObject] = [
        pod("web"),
        svc("web", cluster_ip=None),
        svc("external", selector={}, cluster_ip="10.96.0.2"),
        svc("web2", selector={"app": "web"}, cluster_ip="10.96.0.3"),
    ]
    services = translate(objs, version=1).snapshot.services
    assert [(s.name, len(s.endpoints)) for s in services] == [("external", 0), ("web2", 1)]


def test_endpoints_are_selected_pods_with_an_ip_in_the_namespace() -> None:
    objs: list[m.K8sObject] = [
        pod("a", ip="10.0.0.1", labels={"app": "web"}),
        pod("b", ip="10.0.0.2", labels={"app": "web", "v": "2"}),
        pod("c", ip=None, labels={"app": "web"}),
        pod("d", ip="10.0.0.4", labels={"app": "db"}),
        pod("e", "other", ip="10.0.0.5", labels={"app": "web"}),
        svc("web"),
    ]
    (service,) = translate(objs, version=1).snapshot.services
    assert [(e.workload_uid, e.ip) for e in service.endpoints] == [
        ("default/a", "10.0.0.1"),
        ("default/b", "10.0.0.2"),
    ]
    assert service.endpoints[0].ports == ((80, 8080),)


def test_named_target_port_resolves_per_pod() -> None:
    ports = (
        m.ServicePortSpec(port=80, target_port="http", name="http"),
        m.ServicePortSpec(port=9090, target_port=9090, name="metrics"),
    )
    objs: list[m.K8sObject] = [
        pod("old", ip="10.0.0.1", labels={"app": "web"}, ports={"http": 8080}),
        pod("new", ip="10.0.0.2", labels={"app": "web"}, ports={"http": 8081}),
        pod("bare", ip="10.0.0.3", labels={"app": "web"}),
        svc("web", ports=ports),
    ]
    (service,) = translate(objs, version=1).snapshot.services
    assert service.ports == (
        ServicePort(80, 0, "http", target_port_name="http"),
        ServicePort(9090, 9090, "metrics"),
    )
    assert {e.workload_uid: e.ports for e in service.endpoints} == {
        "default/old": ((80, 8080), (9090, 9090)),
        "default/new": ((80, 8081), (9090, 9090)),
        "default/bare": ((9090, 9090),),
    }


def test_app_protocol_is_carried_over() -> None:
    ports = (
        m.ServicePortSpec(port=80, target_port=8080, name="web", app_protocol="http"),
        m.ServicePortSpec(port=81, target_port=8081, app_protocol="kubernetes.io/h2c"),
        m.ServicePortSpec(port=5432, target_port=5432),
    )
    objs: list[m.K8sObject] = [pod("a", labels={"app": "web"}), svc("web", ports=ports)]
    (service,) = translate(objs, version=1).snapshot.services
    assert [(p.port, p.app_protocol) for p in service.ports] == [
        (80, "http"),
        (81, "kubernetes.io/h2c"),
        (5432, ""),
    ]


def test_pod_lacking_the_only_named_port_is_not_an_endpoint() -> None:
    ports = (m.ServicePortSpec(port=80, target_port="http"),)
    objs: list[m.K8sObject] = [pod("bare", labels={"app": "web"}), svc("web", ports=ports)]
    (service,) = translate(objs, version=1).snapshot.services
    assert service.endpoints == ()


def test_unmeshed_pods_are_endpoints_too() -> None:
    objs: list[m.K8sObject] = [ns("shop", ambient=False), pod("web", "shop"), svc("web", "shop")]
    snap = translate(objs, version=1).snapshot
    assert snap.workloads[0].protocol == "TCP"
    assert snap.services[0].endpoints[0].workload_uid == "shop/web"


# --- policy ----------------------------------------------------------------------------------


def policy(spec: str, namespace: str = "shop") -> m.K8sObject:
    head = "apiVersion: security.ambit.io/v1\nkind: AuthorizationPolicy\n"
    head += f"metadata: {{name: p, namespace: {namespace}}}\nspec:\n"
    (obj,) = m.loads(head + textwrap.indent(textwrap.dedent(spec), "  "), "policy.yaml")
    return obj


def test_policy_l4_fields() -> None:
    obj = policy(
        """
        selector: {matchLabels: {app: web}}
        action: DENY
        rules:
          - from:
              - source:
                  principals: ["cluster.local/ns/shop/sa/admin", "*/sa/robot"]
                  notPrincipals: ["cluster.local/ns/shop/sa/ok"]
                  namespaces: ["shop*"]
                  notNamespaces: ["*-test"]
                  ipBlocks: ["10.0.0.0/8"]
                  notIpBlocks: ["10.9.0.1"]
            to:
              - operation: {ports: ["8080", "9090"], notPorts: ["22"]}
        """
    )
    (authz,) = translate([obj], version=1).snapshot.authorizations
    assert authz == Authorization(
        "p",
        "shop",
        "DENY",
        (("app", "web"),),
        (
            Rule(
                (
                    Source(
                        principals=("cluster.local/ns/shop/sa/admin", "*/sa/robot"),
                        not_principals=("cluster.local/ns/shop/sa/ok",),
                        namespaces=("shop*",),
                        not_namespaces=("*-test",),
                        ip_blocks=("10.0.0.0/8",),
                        not_ip_blocks=("10.9.0.1",),
                    ),
                ),
                (Operation(ports=(8080, 9090), not_ports=(22,)),),
            ),
        ),
    )


def test_policy_l7_values_are_kept() -> None:
    obj = policy(
        """
        rules:
          - from:
              - source: {requestPrincipals: ["*"], remoteIpBlocks: ["1.2.3.4"]}
              - source: {principals: ["*"], notRequestPrincipals: ["bad/*"]}
            to:
              - operation: {ports: ["80"], methods: [GET], paths: ["/admin*"], notHosts: [x]}
              - operation: {ports: ["81"], hosts: [web.shop], notMethods: [PUT], notPaths: [/y]}
        """
    )
    (authz,) = translate([obj], version=1).snapshot.authorizations
    assert authz.rules == (
        Rule(
            (
                Source(request_principals=("*",), remote_ip_blocks=("1.2.3.4",)),
                Source(principals=("*",), not_request_principals=("bad/*",)),
            ),
            (
                Operation(ports=(80,), methods=("GET",), paths=("/admin*",), not_hosts=("x",)),
                Operation(
                    ports=(81,), hosts=("web.shop",), not_methods=("PUT",), not_paths=("/y",)
                ),
            ),
        ),
    )
    (r,) = authz.rules
    assert r.sources[0].l7 == ("requestPrincipals", "remoteIpBlocks")
    assert r.operations[0].l7 == ("notHosts", "methods", "paths")
    assert r.l7 == (
        "requestPrincipals",
        "remoteIpBlocks",
        "notRequestPrincipals",
        "notHosts",
        "methods",
        "paths",
        "hosts",
        "notMethods",
        "notPaths",
    )


def test_when_conditions_belong_to_the_whole_rule() -> None:
    obj = policy(
        """
        rules:
          - to: [{operation: {ports: ["80"]}}, {operation: {ports: ["81"]}}]
            when: [{key: "request.auth.claims[iss]", values: [me]}]
          - from: [{source: {principals: ["*"]}}]
            when:
              - {key: source.ip, notValues: [10.0.0.1]}
              - {key: "request.headers[x]", values: [a, b], notValues: [c]}
        """
    )
    (authz,) = translate([obj], version=1).snapshot.authorizations
    first, second = authz.rules
    assert first.operations == (Operation(ports=(80,)), Operation(ports=(81,)))
    assert first.when == (Condition("request.auth.claims[iss]", ("me",)),)
    assert first.l7 == ("when:request.auth.claims[iss]",)
    assert second.operations == ()
    assert second.when == (
        Condition("source.ip", (), ("10.0.0.1",)),
        Condition("request.headers[x]", ("a", "b"), ("c",)),
    )
    assert second.l7 == ("when:source.ip", "when:request.headers[x]")


def test_policy_without_rules_and_selector() -> None:
    (authz,) = translate([policy("{}")], version=1).snapshot.authorizations
    assert authz == Authorization("p", "shop", "ALLOW", None, ())
    (empty_rule,) = translate([policy("rules: [{}]")], version=1).snapshot.authorizations
    assert empty_rule.rules == (Rule(),)


def test_target_refs_and_audit_are_carried_over() -> None:
    obj = policy(
        """
        targetRefs:
          - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
          - {group: core, kind: Service, name: web}
        action: AUDIT
        rules: [{to: [{operation: {methods: [GET]}}]}]
        """
    )
    (authz,) = translate([obj], version=1).snapshot.authorizations
    assert authz == Authorization(
        "p",
        "shop",
        "AUDIT",
        None,
        (Rule(operations=(Operation(methods=("GET",)),)),),
        (TargetRef(GATEWAY_GROUP, "Gateway", "waypoint"), TargetRef("", "Service", "web")),
    )
    assert authz.for_waypoint


def test_custom_fails_closed_as_a_deny_of_everything_it_selects() -> None:
    obj = policy(
        """
        selector: {matchLabels: {app: web}}
        action: CUSTOM
        provider: {name: ext-authz}
        rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
        """
    )
    (authz,) = translate([obj], version=1).snapshot.authorizations
    assert authz == Authorization("p", "shop", "DENY", (("app", "web"),), (Rule(),))
    at_waypoint = policy(
        """
        targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
        action: CUSTOM
        provider: {name: ext-authz}
        rules: [{}]
        """
    )
    (authz,) = translate([at_waypoint], version=1).snapshot.authorizations
    assert (authz.action, authz.rules, authz.for_waypoint) == ("DENY", (Rule(),), True)


# --- ztunnel_acceptance: the condition ztunnel's side of a policy shows -----------------------


def test_plain_l4_policy_is_accepted() -> None:
    obj = policy(
        """
        selector: {matchLabels: {app: web}}
        rules:
          - from: [{source: {principals: ["cluster.local/ns/shop/sa/front"]}}]
            to: [{operation: {ports: ["8080"]}}]
        """
    )
    assert isinstance(obj, m.AuthorizationPolicy)
    assert ztunnel_acceptance(obj) == (True, "Accepted", "enforced by ztunnel")
    empty = policy("{}")
    assert isinstance(empty, m.AuthorizationPolicy)
    assert ztunnel_acceptance(empty) == (True, "Accepted", "enforced by ztunnel")


def test_custom_is_unsupported_and_denies_what_it_selects() -> None:
    obj = policy(
        """
        action: CUSTOM
        provider: {name: ext-authz}
        rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
        """
    )
    assert isinstance(obj, m.AuthorizationPolicy)
    assert ztunnel_acceptance(obj) == (
        False,
        "UnsupportedValue",
        "CUSTOM needs an external authorizer, which ambit does not have (provider ext-authz);"
        " it denies what it selects",
    )
    at_waypoint = policy(
        """
        targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
        action: CUSTOM
        provider: {name: ext-authz}
        rules: [{}]
        """
    )
    assert isinstance(at_waypoint, m.AuthorizationPolicy)
    accepted, reason, message = ztunnel_acceptance(at_waypoint)
    assert (accepted, reason) == (False, "UnsupportedValue")
    assert message.endswith("; the waypoint of Gateway waypoint will deny everything it serves")


def test_target_refs_are_waypoint_only() -> None:
    obj = policy(
        """
        targetRefs:
          - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
          - {kind: Service, name: web}
        rules: [{to: [{operation: {methods: [GET]}}]}]
        """
    )
    assert isinstance(obj, m.AuthorizationPolicy)
    assert ztunnel_acceptance(obj) == (
        True,
        "WaypointOnly",
        "enforced by the waypoint of Gateway waypoint, Service web, not by ztunnel",
    )
    entry = policy(
        "targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: ext}]\naction: DENY"
    )
    assert isinstance(entry, m.AuthorizationPolicy)
    assert ztunnel_acceptance(entry) == (
        True,
        "WaypointOnly",
        "enforced by the waypoint of ServiceEntry ext, not by ztunnel;"
        " ambit has no ServiceEntry, so ext binds nothing",
    )


def test_audit_is_waypoint_only() -> None:
    obj = policy(
        """
        selector: {matchLabels: {app: api}}
        action: AUDIT
        rules: [{to: [{operation: {methods: [GET]}}]}]
        """
    )
    assert isinstance(obj, m.AuthorizationPolicy)
    accepted, reason, message = ztunnel_acceptance(obj)
    assert (accepted, reason) == (True, "WaypointOnly")
    assert "ztunnel ignores it, and no waypoint takes a policy without targetRefs" in message
    at_waypoint = policy(
        """
        targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
        action: AUDIT
        rules: [{}]
        """
    )
    assert isinstance(at_waypoint, m.AuthorizationPolicy)
    assert ztunnel_acceptance(at_waypoint) == (
        True,
        "WaypointOnly",
        "enforced by the waypoint of Gateway waypoint, not by ztunnel",
    )


def test_allow_with_l7_fields_matches_nothing_at_ztunnel() -> None:
    obj = policy(
        """
        rules:
          - to: [{operation: {ports: ["8080"]}}]
          - from: [{source: {requestPrincipals: ["*"]}}]
            to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
          - to: [{operation: {methods: [HEAD]}}]
            when: [{key: "request.headers[x-env]", values: [prod]}]
        """
    )
    assert isinstance(obj, m.AuthorizationPolicy)
    assert ztunnel_acceptance(obj) == (
        False,
        "L7AttributesIgnored",
        "ztunnel cannot check requestPrincipals, methods, paths, when:request.headers[x-env]"
        " (rules 2, 3): an ALLOW rule naming them matches nothing at ztunnel;"
        " only a waypoint (targetRefs) can enforce them",
    )


def test_deny_with_l7_fields_is_enforced_on_its_l4_part() -> None:
    obj = policy(
        """
        action: DENY
        rules: [{to: [{operation: {ports: ["8080"], methods: [POST]}}]}]
        """
    )
    assert isinstance(obj, m.AuthorizationPolicy)
    assert ztunnel_acceptance(obj) == (
        False,
        "L7AttributesIgnored",
        "ztunnel cannot check methods (rule 1): a DENY rule naming them is enforced on its L4"
        " part alone (more restrictive); only a waypoint (targetRefs) can enforce them",
    )


def test_acceptance_agrees_with_what_ztunnel_decides() -> None:
    """The condition says what evaluate() does: an accepted L4 policy decides, a waypoint-only
    one never does, an ALLOW with L7 fields denies, a CUSTOM denies."""
    server = translate(assign_ips(m.load(DEMO)), version=1).snapshot.workload("demo/server")
    assert server is not None
    client = conn(server, src=identity("demo", "client"))
    cases = {
        "rules: [{from: [{source: {namespaces: [demo]}}]}]": (True, True),
        "targetRefs: [{kind: Service, name: server}]": (True, True),
        "rules: [{to: [{operation: {methods: [GET]}}]}]": (False, False),
        "action: CUSTOM\nprovider: {name: x}\nrules: [{}]": (False, False),
    }
    for spec, (accepted, allowed) in cases.items():
        obj = policy(spec, namespace="demo")
        assert isinstance(obj, m.AuthorizationPolicy)
        snap = translate([*assign_ips(m.load(DEMO)), obj], version=1).snapshot
        assert ztunnel_acceptance(obj)[0] is accepted, spec
        assert evaluate(client, snap.policies_for(server)).allowed is allowed, spec


def test_peer_authentication_is_carried_over() -> None:
    objs: list[m.K8sObject] = [
        m.PeerAuthentication(name="strict", namespace="ambit-system", mode="STRICT"),
        m.PeerAuthentication(name="web", namespace="shop", selector=(("app", "web"),)),
    ]
    assert translate(objs, version=1).snapshot.peer_authentications == (
        PeerAuthentication("strict", "ambit-system", None, "STRICT"),
        PeerAuthentication("web", "shop", (("app", "web"),), "UNSET"),
    )


def test_yaml_to_decision() -> None:
    """The pure pipeline end to end: manifests -> translate -> evaluate."""
    objs = assign_ips(m.load(DEMO))
    objs.append(
        policy(
            """
            selector: {matchLabels: {app: server}}
            rules:
              - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
                to: [{operation: {ports: ["8080"]}}]
            """,
            namespace="demo",
        )
    )
    snap = translate(objs, version=1).snapshot
    server = snap.workload("demo/server")
    assert server is not None
    policies = snap.policies_for(server)
    assert evaluate(conn(server, src=identity("demo", "client")), policies).allowed
    assert not evaluate(conn(server, src=identity("demo", "server")), policies).allowed
    assert not evaluate(conn(server, src=None), policies).allowed
    assert not evaluate(conn(server, src=identity("demo", "client"), port=9000), policies).allowed


def test_yaml_to_decision_for_waypoint_and_custom_policies() -> None:
    """A targetRefs ALLOW policy leaves ztunnel open; a CUSTOM one closes what it selects."""
    objs = assign_ips(m.load(DEMO))
    objs.append(
        policy(
            """
            targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
            rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/nobody"]}}]}]
            """,
            namespace="demo",
        )
    )
    snap = translate(objs, version=1).snapshot
    server = snap.workload("demo/server")
    assert server is not None
    assert snap.policies_for(server) == ()
    assert evaluate(conn(server, src=identity("demo", "client")), snap.policies_for(server)).allowed
    objs[-1] = policy(
        """
        selector: {matchLabels: {app: server}}
        action: CUSTOM
        provider: {name: ext-authz}
        rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
        """,
        namespace="demo",
    )
    snap = translate(objs, version=2).snapshot
    decision = evaluate(conn(server, src=identity("demo", "client")), snap.policies_for(server))
    assert not decision.allowed
    assert decision.policy == "demo/p"


@pytest.mark.parametrize(
    ("pod_label", "namespace_label", "meshed"),
    [
        (None, "ambient", True),
        ("none", "ambient", False),
        ("ambient", None, True),
        ("something-else", "ambient", True),  # only none and ambient mean anything on a Pod
        (None, None, False),
        (None, "none", False),
    ],
)
def test_local_cluster_and_translation_agree_on_who_is_meshed(
    pod_label: str | None, namespace_label: str | None, meshed: bool
) -> None:
    pod_labels = {} if pod_label is None else {"ambit.io/dataplane-mode": pod_label}
    ns_labels = {} if namespace_label is None else {"ambit.io/dataplane-mode": namespace_label}
    assert meshed_by_labels(pod_labels, ns_labels) is meshed
    pod = m.Pod(name="p", namespace="ns", labels=tuple(pod_labels.items()))
    assert in_mesh(pod, m.Namespace(name="ns", labels=tuple(ns_labels.items()))) is meshed


def test_only_ready_pods_are_endpoints_but_every_pod_with_an_ip_is_a_workload() -> None:
    """One rule for endpoints, whatever the source: the Ready pods a Service selects."""
    docs = """\
apiVersion: v1
kind: Pod
metadata: {name: ready, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.1, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.2, phase: Running, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}
"""
    snapshot = translate(m.loads(docs), version=1).snapshot
    assert sorted(w.name for w in snapshot.workloads) == ["plain", "ready", "starting"]
    (service,) = snapshot.services
    assert sorted(e.workload_uid for e in service.endpoints) == ["shop/plain", "shop/ready"]
