"""ztunnel's inbound rule for a pod bound to a waypoint (``waypoint-for: workload`` or
``all``): the waypoint's traffic is admitted, anyone else's only when an ALLOW policy says
so, so the waypoint's L7 policies cannot be skipped by dialling the pod."""

from __future__ import annotations

import dataclasses

from mesh.identity import SpiffeId
from mesh.record import ConnectionRecord
from tests.builders import allow, identity, rule, service, snapshot, source, workload
from ztunnel.inbound import inbound_decision

WEB = workload("web", ip="10.0.1.1", waypoint="default/waypoint")
WAYPOINT_POD = workload("waypoint-1", ip="10.0.5.1", sa="waypoint")
WAYPOINT = service("waypoint", vip="10.96.0.99", ports={15008: 15008}, backends=[WAYPOINT_POD])


def record(src: SpiffeId | None) -> ConnectionRecord:
    return ConnectionRecord(
        "inbound", src_addr=("10.0.2.2", 40000), dst_addr=(WEB.ip, 8080), src_identity=src,
        dst_workload=WEB,
    )  # fmt: skip


def test_the_waypoint_is_admitted_and_others_are_not() -> None:
    snap = snapshot(WEB, WAYPOINT_POD, WAYPOINT)
    assert inbound_decision(snap, record(identity("default", "waypoint"))).allowed
    refused = inbound_decision(snap, record(identity("default", "client")))
    assert not refused.allowed
    assert "through its waypoint default/waypoint" in refused.reason
    assert not inbound_decision(snap, record(None)).allowed


def test_an_allow_policy_can_let_a_named_source_straight_in() -> None:
    probe = source(principals=["cluster.local/ns/default/sa/probe"])
    policy = allow("direct", rule(sources=[probe]))
    snap = snapshot(WEB, WAYPOINT_POD, WAYPOINT, policy)
    assert inbound_decision(snap, record(identity("default", "probe"))).allowed
    assert not inbound_decision(snap, record(identity("default", "client"))).allowed


def test_a_pod_without_a_waypoint_is_unchanged() -> None:
    plain = dataclasses.replace(WEB, waypoint=None)
    snap = snapshot(plain, WAYPOINT_POD, WAYPOINT)
    rec = dataclasses.replace(record(identity("default", "client")), dst_workload=plain)
    assert inbound_decision(snap, rec).allowed
