"""Outbound planning: VIP -> endpoint, HBONE to meshed pods, passthrough otherwise."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mesh.model import Endpoint, Service, ServicePort
from tests.builders import identity, service, snapshot, workload
from ztunnel.plan import NoHealthyEndpoint, Plan, PlanError, UnknownServicePort, plan_outbound

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
    assert plan == Plan(
        kind="hbone",
        dial=("10.0.1.1", 15008),
        source_identity=CLIENT.identity,
        authority="10.0.1.1:8080",
        expected_identity=identity("default", "web"),
        dst_workload=WEB_A,
        service=None,
    )


def test_pod_ip_keeps_the_original_port() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.0.1.2", 9999)
    assert plan.authority == "10.0.1.2:9999"
    assert plan.dial == ("10.0.1.2", 15008)


def test_unmeshed_pod_is_passthrough() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.0.2.1", 5432)
    assert plan == Plan(
        kind="passthrough",
        dial=("10.0.2.1", 5432),
        source_identity=CLIENT.identity,
        dst_workload=LEGACY,
    )
    assert plan.authority is None
    assert plan.expected_identity is None


def test_unknown_address_is_passthrough() -> None:
    plan = plan_outbound(SNAP, CLIENT, "93.184.216.34", 443)
    assert plan == Plan(
        kind="passthrough", dial=("93.184.216.34", 443), source_identity=CLIENT.identity
    )


def test_source_identity_is_the_callers() -> None:
    other = workload("other", "shop", ip="10.0.3.1", sa="buyer")
    plan = plan_outbound(snapshot(other, WEB_A), other, "10.0.1.1", 8080)
    assert plan.source_identity == identity("shop", "buyer")


def test_a_pod_calling_itself_still_goes_through_hbone() -> None:
    plan = plan_outbound(SNAP, CLIENT, CLIENT.ip, 8080)
    assert plan.kind == "hbone"
    assert plan.expected_identity == CLIENT.identity


def test_ipv6_authority_has_brackets() -> None:
    v6 = workload("v6", ip="fd00::10")
    plan = plan_outbound(snapshot(CLIENT, v6), CLIENT, "fd00::10", 8080)
    assert plan.dial == ("fd00::10", 15008)
    assert plan.authority == "[fd00::10]:8080"


# --- service VIPs ----------------------------------------------------------------------------


def test_vip_resolves_to_an_endpoint_and_its_target_port() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.96.0.10", 80, pick=first)
    assert plan == Plan(
        kind="hbone",
        dial=("10.0.1.1", 15008),
        source_identity=CLIENT.identity,
        authority="10.0.1.1:8080",
        expected_identity=WEB_A.identity,
        dst_workload=WEB_A,
        service=WEB,
    )


def test_each_service_port_maps_to_its_target() -> None:
    plan = plan_outbound(SNAP, CLIENT, "10.96.0.10", 443, pick=last)
    assert plan.authority == "10.0.1.2:8443"
    assert plan.dst_workload == WEB_B


def test_pick_chooses_among_the_endpoints() -> None:
    seen: list[Sequence[Endpoint]] = []

    def spy(endpoints: Sequence[Endpoint]) -> Endpoint:
        seen.append(endpoints)
        return endpoints[1]

    plan = plan_outbound(SNAP, CLIENT, "10.96.0.10", 80, pick=spy)
    assert [[e.workload_uid for e in s] for s in seen] == [["default/web-a", "default/web-b"]]
    assert plan.dial == ("10.0.1.2", 15008)


def test_default_pick_spreads_over_endpoints() -> None:
    dialled = {plan_outbound(SNAP, CLIENT, "10.96.0.10", 80).dial for _ in range(64)}
    assert dialled == {("10.0.1.1", 15008), ("10.0.1.2", 15008)}


def test_unmeshed_endpoint_is_passthrough_to_its_target_port() -> None:
    svc = service("legacy", vip="10.96.0.20", ports={5432: 5433}, backends=[LEGACY])
    plan = plan_outbound(snapshot(CLIENT, LEGACY, svc), CLIENT, "10.96.0.20", 5432)
    assert plan == Plan(
        kind="passthrough",
        dial=("10.0.2.1", 5433),
        source_identity=CLIENT.identity,
        dst_workload=LEGACY,
        service=svc,
    )


def test_mixed_endpoints_follow_the_picked_pod() -> None:
    svc = service("mixed", vip="10.96.0.30", backends=[WEB_A, LEGACY])
    snap = snapshot(CLIENT, WEB_A, LEGACY, svc)
    assert [e.workload_uid for e in svc.endpoints] == ["default/legacy", "default/web-a"]
    assert plan_outbound(snap, CLIENT, "10.96.0.30", 80, pick=first).kind == "passthrough"
    assert plan_outbound(snap, CLIENT, "10.96.0.30", 80, pick=last).kind == "hbone"


def test_endpoint_of_an_unknown_workload_is_passthrough() -> None:
    svc = Service(
        "ghost",
        "default",
        "10.96.0.40",
        (ServicePort(80, 8080),),
        (Endpoint("default/ghost", "10.0.9.9", ((80, 8080),)),),
    )
    plan = plan_outbound(snapshot(CLIENT, svc), CLIENT, "10.96.0.40", 80)
    assert (plan.kind, plan.dial, plan.dst_workload) == ("passthrough", ("10.0.9.9", 8080), None)


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
    assert plan_outbound(snap, CLIENT, svc.vip, 80, pick=first).authority == "10.0.1.1:8080"
    assert plan_outbound(snap, CLIENT, svc.vip, 80, pick=last).authority == "10.0.1.2:8081"


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
    assert plan_outbound(snap, CLIENT, svc.vip, 80, pick=first).dst_workload == WEB_B


# --- errors ----------------------------------------------------------------------------------


def test_unknown_service_port() -> None:
    with pytest.raises(UnknownServicePort) as info:
        plan_outbound(SNAP, CLIENT, "10.96.0.10", 8080)
    assert str(info.value) == (
        "service default/web (10.96.0.10) has no port 8080; it defines 80, 443: does the client"
        " use the service port (not the pod's)?"
    )


def test_unknown_service_port_names_named_ports() -> None:
    svc = service("web", vip="10.96.0.10", ports=[ServicePort(80, 8080, "http")])
    with pytest.raises(UnknownServicePort, match=r"it defines 80 \(http\)"):
        plan_outbound(snapshot(CLIENT, svc), CLIENT, "10.96.0.10", 81)


def test_service_without_endpoints() -> None:
    svc = service("empty", vip="10.96.0.50")
    with pytest.raises(NoHealthyEndpoint) as info:
        plan_outbound(snapshot(CLIENT, svc), CLIENT, "10.96.0.50", 80)
    message = str(info.value)
    assert message.startswith("service default/empty has no endpoint for port 80:")
    assert "selector" in message


def test_no_endpoint_serves_the_port() -> None:
    svc = Service(
        "web",
        "default",
        "10.96.0.10",
        (ServicePort(80, 0, target_port_name="http"),),
        (Endpoint(WEB_A.uid, WEB_A.ip, ()),),
    )
    with pytest.raises(NoHealthyEndpoint, match="named targetPort"):
        plan_outbound(snapshot(CLIENT, WEB_A, svc), CLIENT, svc.vip, 80)


def test_plan_errors_share_a_base() -> None:
    assert issubclass(UnknownServicePort, PlanError)
    assert issubclass(NoHealthyEndpoint, PlanError)
