"""Outbound planning: VIP -> endpoint, HBONE to meshed pods or their waypoint, passthrough
otherwise, and refusals with their reason; a pure function tested without sockets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mesh.model import Endpoint, Service, ServicePort
from mesh.reason import Reason
from tests.builders import identity, service, snapshot, workload
from ztunnel.plan import Direct, Passthrough, Refused, ViaWaypoint, plan_outbound

CLIENT = workload("client", ip="10.0.0.5", node="node-1")
WEB_A = workload("web-a", ip="10.0.1.1", sa="web", node="node-2", labels={"app": "web"})
WEB_B = workload("web-b", ip="10.0.1.2", sa="web", node="node-3", labels={"app": "web"})
LEGACY = workload("legacy", ip="10.0.2.1", meshed=False)
WEB = service("web", vip="10.96.0.10", ports={80: 8080, 443: 8443}, backends=[WEB_A, WEB_B])


def first(endpoints: Sequence[Endpoint]) -> Endpoint:
    return endpoints[0]


def last(endpoints: Sequence[Endpoint]) -> Endpoint:
    return endpoints[-1]


SNAP = snapshot(CLIENT, WEB_A, WEB_B, LEGACY, WEB)


# --- pod IPs ---------------------------------------------------------------------------------


def test_meshed_pod_ip_goes_over_hbone() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.0.1.1", 8080)
    assert plan == Direct(
        dial=("10.0.1.1", 15008),
        authority="10.0.1.1:8080",
        expected_identity=identity("default", "web"),
        dst_workload=WEB_A,
        service=None,
    )


def test_pod_ip_keeps_the_original_port() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.0.1.2", 9999)
    assert isinstance(plan, Direct)
    assert plan.authority == "10.0.1.2:9999"
    assert plan.dial == ("10.0.1.2", 15008)


def test_unmeshed_pod_is_passthrough() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.0.2.1", 5432)
    assert plan == Passthrough(dial=("10.0.2.1", 5432), dst_workload=LEGACY)


def test_unknown_address_is_passthrough() -> None:
    plan = plan_outbound(SNAP, CLIENT, "93.184.216.34", 443)
    assert plan == Passthrough(dial=("93.184.216.34", 443))


def test_a_pod_calling_itself_still_goes_through_hbone() -> None:
    plan = plan_outbound(SNAP, CLIENT, CLIENT.ip, 8080)
    assert isinstance(plan, Direct)
    assert plan.expected_identity == CLIENT.identity


def test_ipv6_authority_has_brackets() -> None:
    v6 = workload("v6", ip="fd00::10")
    plan = plan_outbound(snapshot(CLIENT, v6), CLIENT, "fd00::10", 8080)
    assert isinstance(plan, Direct)
    assert plan.dial == ("fd00::10", 15008)
    assert plan.authority == "[fd00::10]:8080"


# --- service VIPs ----------------------------------------------------------------------------


def test_vip_resolves_to_an_endpoint_and_its_target_port() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.96.0.10", 80, pick=first)
    assert plan == Direct(
        dial=("10.0.1.1", 15008),
        authority="10.0.1.1:8080",
        expected_identity=WEB_A.identity,
        dst_workload=WEB_A,
        service=WEB,
    )


def test_each_service_port_maps_to_its_target() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.96.0.10", 443, pick=last)
    assert isinstance(plan, Direct)
    assert plan.authority == "10.0.1.2:8443"
    assert plan.dst_workload == WEB_B


def test_pick_chooses_among_the_endpoints() -> None:
    seen: list[Sequence[Endpoint]] = []

    def spy(endpoints: Sequence[Endpoint]) -> Endpoint:
        seen.append(endpoints)
        return endpoints[1]

    plan = plan_outbound(SNAP, CLIENT, "10.96.0.10", 80, pick=spy)
    assert [[e.workload_uid for e in s] for s in seen] == [["default/web-a", "default/web-b"]]
    assert isinstance(plan, Direct)
    assert plan.dial == ("10.0.1.2", 15008)


def test_default_pick_spreads_over_endpoints() -> None:
    plans = [plan_outbound(SNAP, CLIENT, "10.96.0.10", 80) for _ in range(64)]
    dialled = {p.dial for p in plans if isinstance(p, Direct)}
    assert dialled == {("10.0.1.1", 15008), ("10.0.1.2", 15008)}


def test_unmeshed_endpoint_is_passthrough_to_its_target_port() -> None:
    svc = service("legacy", vip="10.96.0.20", ports={5432: 5433}, backends=[LEGACY])
    plan = plan_outbound(snapshot(CLIENT, LEGACY, svc), CLIENT, "10.96.0.20", 5432)
    assert plan == Passthrough(dial=("10.0.2.1", 5433), dst_workload=LEGACY, service=svc)


def test_mixed_endpoints_follow_the_picked_pod() -> None:
    svc = service("mixed", vip="10.96.0.30", backends=[WEB_A, LEGACY])
    snap = snapshot(CLIENT, WEB_A, LEGACY, svc)
    assert [e.workload_uid for e in svc.endpoints] == ["default/legacy", "default/web-a"]
    assert isinstance(plan_outbound(snap, CLIENT, "10.96.0.30", 80, pick=first), Passthrough)
    assert isinstance(plan_outbound(snap, CLIENT, "10.96.0.30", 80, pick=last), Direct)


def test_endpoint_of_an_unknown_workload_is_passthrough() -> None:
    svc = Service(
        "ghost",
        "default",
        "10.96.0.40",
        (ServicePort(80, 8080),),
        (Endpoint("default/ghost", "10.0.9.9", ((80, 8080),)),),
    )
    plan = plan_outbound(snapshot(CLIENT, svc), CLIENT, "10.96.0.40", 80)
    assert plan == Passthrough(dial=("10.0.9.9", 8080), service=svc)


def test_named_target_port_differs_per_endpoint() -> None:
    svc = Service(
        "web",
        "default",
        "10.96.0.10",
        (ServicePort(80, 0, "http", target_port_name="http"),),
        (
            Endpoint(WEB_A.uid, WEB_A.ip, ((80, 8080),)),
            Endpoint(WEB_B.uid, WEB_B.ip, ((80, 8081),)),
        ),
    )
    snap = snapshot(CLIENT, WEB_A, WEB_B, svc)
    assert authority(plan_outbound(snap, CLIENT, svc.vip, 80, pick=first)) == "10.0.1.1:8080"
    assert authority(plan_outbound(snap, CLIENT, svc.vip, 80, pick=last)) == "10.0.1.2:8081"


def test_only_endpoints_serving_the_port_are_candidates() -> None:
    svc = Service(
        "web",
        "default",
        "10.96.0.10",
        (ServicePort(80, 0, "http", target_port_name="http"), ServicePort(9090, 9090)),
        (
            Endpoint(WEB_A.uid, WEB_A.ip, ((9090, 9090),)),
            Endpoint(WEB_B.uid, WEB_B.ip, ((80, 8081), (9090, 9090))),
        ),
    )
    snap = snapshot(CLIENT, WEB_A, WEB_B, svc)
    plan = plan_outbound(snap, CLIENT, svc.vip, 80, pick=first)
    assert isinstance(plan, Direct)
    assert plan.dst_workload == WEB_B


# --- refusals -------------------------------------------------------------------------------


def test_unknown_service_port() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.96.0.10", 8080)
    assert plan == Refused(
        Reason.NO_HEALTHY_ENDPOINT,
        "service default/web (10.96.0.10) has no port 8080; it defines 80, 443: does the client"
        " use the service port (not the pod's)?",
        WEB,
    )


def test_unknown_service_port_names_named_ports() -> None:
    svc = service("web", vip="10.96.0.10", ports=[ServicePort(80, 8080, "http")])
    plan = plan_outbound(snapshot(CLIENT, svc), CLIENT, "10.96.0.10", 81)
    assert isinstance(plan, Refused)
    assert "it defines 80 (http)" in plan.detail


def test_service_without_endpoints() -> None:
    svc = service("empty", vip="10.96.0.50")
    plan = plan_outbound(snapshot(CLIENT, svc), CLIENT, "10.96.0.50", 80)
    assert isinstance(plan, Refused)
    assert plan.reason is Reason.NO_HEALTHY_ENDPOINT
    assert plan.detail.startswith("service default/empty has no endpoint for port 80:")
    assert "selector" in plan.detail


def test_no_endpoint_serves_the_port() -> None:
    svc = Service(
        "web",
        "default",
        "10.96.0.10",
        (ServicePort(80, 0, target_port_name="http"),),
        (Endpoint(WEB_A.uid, WEB_A.ip, ()),),
    )
    plan = plan_outbound(snapshot(CLIENT, WEB_A, svc), CLIENT, svc.vip, 80)
    assert isinstance(plan, Refused)
    assert "named targetPort" in plan.detail


# --- waypoints -------------------------------------------------------------------------------

WAYPOINT_POD = workload("waypoint-7f9c", ip="10.0.5.1", sa="waypoint", labels={"gw": "waypoint"})
WAYPOINT = service("waypoint", vip="10.96.0.99", ports={15008: 15008}, backends=[WAYPOINT_POD])
BOUND = dataclasses.replace(WEB, waypoint="default/waypoint")


def test_a_service_bound_to_a_waypoint_goes_to_the_waypoint_with_its_vip_as_authority() -> None:
    snap = snapshot(CLIENT, WEB_A, WEB_B, WAYPOINT_POD, WAYPOINT, BOUND)
    plan = plan_outbound(snap, CLIENT, "10.96.0.10", 80)
    assert plan == ViaWaypoint(
        dial=("10.0.5.1", 15008),
        authority="10.96.0.10:80",  # the waypoint picks the endpoint and routes on it
        expected_identity=identity("default", "waypoint"),
        waypoint=WAYPOINT_POD,
        service=BOUND,
    )


def test_a_waypoint_that_is_absent_fails_closed() -> None:
    plan = plan_outbound(snapshot(CLIENT, WEB_A, WEB_B, BOUND), CLIENT, "10.96.0.10", 80)
    assert isinstance(plan, Refused)
    assert plan.reason is Reason.NO_HEALTHY_ENDPOINT
    assert "waypoint default/waypoint" in plan.detail
    assert "rather than sent around the waypoint" in plan.detail


def test_a_waypoint_without_ready_pods_fails_closed() -> None:
    empty = service("waypoint", vip="10.96.0.99", ports={15008: 15008})
    plan = plan_outbound(snapshot(CLIENT, WEB_A, empty, BOUND), CLIENT, "10.96.0.10", 80)
    assert isinstance(plan, Refused)
    unmeshed = workload("waypoint-7f9c", ip="10.0.5.1", sa="waypoint", meshed=False)
    wp = service("waypoint", vip="10.96.0.99", ports={15008: 15008}, backends=[unmeshed])
    plan = plan_outbound(snapshot(CLIENT, WEB_A, unmeshed, wp, BOUND), CLIENT, "10.96.0.10", 80)
    assert isinstance(plan, Refused)


def test_pod_ip_traffic_does_not_use_the_services_waypoint() -> None:
    snap = snapshot(CLIENT, WEB_A, WEB_B, WAYPOINT_POD, WAYPOINT, BOUND)
    assert isinstance(plan_outbound(snap, CLIENT, "10.0.1.1", 8080), Direct)


def test_the_waypoints_own_traffic_is_not_sent_back_to_it() -> None:
    snap = snapshot(CLIENT, WEB_A, WEB_B, WAYPOINT_POD, WAYPOINT, BOUND)
    plan = plan_outbound(snap, WAYPOINT_POD, "10.96.0.10", 80, pick=first)
    assert plan == Direct(
        dial=("10.0.1.1", 15008),
        authority="10.0.1.1:8080",
        expected_identity=WEB_A.identity,
        dst_workload=WEB_A,
        service=BOUND,
    )


def test_an_unknown_port_of_a_bound_service_is_refused_before_the_waypoint() -> None:
    snap = snapshot(CLIENT, WEB_A, WAYPOINT_POD, WAYPOINT, BOUND)
    plan = plan_outbound(snap, CLIENT, "10.96.0.10", 8080)
    assert isinstance(plan, Refused)
    assert "has no port 8080" in plan.detail


def authority(plan: object) -> str | None:
    return plan.authority if isinstance(plan, Direct | ViaWaypoint) else None


def test_pod_ip_traffic_to_a_workload_bound_pod_goes_through_its_waypoint() -> None:
    pod = dataclasses.replace(WEB_A, waypoint="default/waypoint")
    snap = snapshot(CLIENT, pod, WAYPOINT_POD, WAYPOINT)
    plan = plan_outbound(snap, CLIENT, "10.0.1.1", 8080, pick=first)
    assert plan == ViaWaypoint(
        dial=("10.0.5.1", 15008),
        authority="10.0.1.1:8080",  # the pod as dialled: the waypoint applies no Service routes
        expected_identity=identity("default", "waypoint"),
        waypoint=WAYPOINT_POD,
        service=None,
        dst_workload=pod,
    )
    # The waypoint itself reaches the pod directly, and a waypoint that is gone fails closed.
    own = plan_outbound(snap, WAYPOINT_POD, "10.0.1.1", 8080)
    assert isinstance(own, Direct)
    gone = plan_outbound(snapshot(CLIENT, pod), CLIENT, "10.0.1.1", 8080)
    assert isinstance(gone, Refused)
    assert "pod default/web-a uses waypoint default/waypoint" in gone.detail
