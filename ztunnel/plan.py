"""Outbound planning: where a captured connection goes, decided by one pure function.

Given the mesh snapshot, the source workload and the original destination
(``SO_ORIGINAL_DST``), :func:`plan_outbound` returns one of four plans:

- :class:`Direct`: mutual TLS to the destination pod's HBONE port and
  ``CONNECT <pod-ip>:<target-port>``, expecting the pod's identity;
- :class:`ViaWaypoint`: the destination Service is bound to a waypoint (or the
  destination pod is, for a waypoint that takes workload traffic), so HBONE goes to
  a waypoint pod, expecting the waypoint's identity, with the original ``VIP:port``
  (``pod-ip:port``) kept as the CONNECT authority (the waypoint routes);
- :class:`Passthrough`: plain TCP (an unmeshed pod, or an address the mesh
  does not know);
- :class:`Refused`: nothing may be dialled, with its :class:`~mesh.reason.Reason`
  (a Service port that does not exist, no endpoint, a waypoint that is not
  there: traffic for a waypoint-bound Service never silently bypasses it).

A Service VIP is first resolved to one endpoint and the service port to its
target port on that pod. Carrying the plan out (sockets, pool) is
:mod:`ztunnel.outbound`'s job.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh.constants import HBONE_PORT
from mesh.identity import SpiffeId
from mesh.model import Endpoint, MeshSnapshot, Service, Workload
from mesh.model_l7 import REFUSED_WAYPOINT
from mesh.reason import Reason

Pick = Callable[[Sequence[Endpoint]], Endpoint]


@dataclass(frozen=True)
class Direct:
    dial: tuple[str, int]  # the destination pod's HBONE address
    authority: str  # CONNECT target: "pod-ip:target-port"
    expected_identity: SpiffeId  # the peer must prove this
    dst_workload: Workload
    service: Service | None = None  # the Service the VIP belonged to, if any


@dataclass(frozen=True)
class ViaWaypoint:
    dial: tuple[str, int]  # a waypoint pod's HBONE address
    authority: str  # the original "VIP:port": the waypoint routes on it
    expected_identity: SpiffeId  # the waypoint's identity
    waypoint: Workload
    service: Service | None  # None: a pod bound to a waypoint (waypoint-for workload or all)
    dst_workload: Workload | None = None  # that pod


@dataclass(frozen=True)
class Passthrough:
    dial: tuple[str, int]
    dst_workload: Workload | None = None  # the destination pod, when the mesh knows it
    service: Service | None = None


@dataclass(frozen=True)
class Refused:
    reason: Reason
    detail: str  # what to check, for the log
    service: Service | None = None


Plan = Direct | ViaWaypoint | Passthrough | Refused


def plan_outbound(
    snapshot: MeshSnapshot,
    source: Workload,
    dst_ip: str,
    dst_port: int,
    *,
    pick: Pick | None = None,
) -> Plan:
    """Plan the connection ``source`` opened to ``dst_ip:dst_port``.

    ``pick`` chooses among endpoints (default: at random)."""
    choose = pick or random.choice
    service = snapshot.service_by_vip(dst_ip)
    if service is None:
        pod = snapshot.workload_by_ip(dst_ip)
        if pod is not None and pod.waypoint is not None and pod.meshed:
            return _via_waypoint(snapshot, source, pod, dst_port, choose)
        return _to_pod(dst_ip, dst_port, pod, None)
    if service.port(dst_port) is None:
        defined = ", ".join(f"{p.port}" + (f" ({p.name})" if p.name else "") for p in service.ports)
        return Refused(
            Reason.NO_HEALTHY_ENDPOINT,
            f"service {service.key} ({service.vip}) has no port {dst_port}; it defines"
            f" {defined or 'no ports'}: does the client use the service port (not the pod's)?",
            service,
        )
    if service.waypoint is not None:
        return _via_waypoint(snapshot, source, service, dst_port, choose)
    return _to_endpoint(snapshot, service, dst_port, choose)


def _to_endpoint(snapshot: MeshSnapshot, service: Service, port: int, choose: Pick) -> Plan:
    candidates = [e for e in service.endpoints if e.target_for(port) is not None]
    if not candidates:
        return Refused(
            Reason.NO_HEALTHY_ENDPOINT,
            f"service {service.key} has no endpoint for port {port}: no running pod with an"
            " IP matches its selector (or none has its named targetPort); check the pods'"
            " labels and status",
            service,
        )
    endpoint = choose(candidates)
    target = endpoint.target_for(port)
    assert target is not None
    return _to_pod(endpoint.ip, target, snapshot.workload(endpoint.workload_uid), service)


def _via_waypoint(
    snapshot: MeshSnapshot,
    source: Workload,
    dst: Service | Workload,
    port: int,
    choose: Pick,
) -> Plan:
    """Through the waypoint ``dst`` (a Service, or a pod bound to one) is bound to, with the
    address the client dialled as the authority; refused when the waypoint has no ready
    pod. The waypoint's own traffic goes on directly."""
    key = dst.waypoint
    assert key is not None
    service = dst if isinstance(dst, Service) else None
    waypoint = snapshot.service(key)
    ready = [
        (e, w)
        for e in (waypoint.endpoints if waypoint else ())
        if (w := snapshot.workload(e.workload_uid)) is not None and w.meshed
    ]
    what = f"service {dst.key}" if service is not None else f"pod {dst.key}"
    if key.endswith(REFUSED_WAYPOINT):
        return Refused(
            Reason.NO_HEALTHY_ENDPOINT,
            f"{what} uses waypoint {key.removesuffix(REFUSED_WAYPOINT)}, which does not admit"
            " its namespace (the Gateway's allowedRoutes); its traffic is refused rather"
            " than sent around the waypoint",
            service,
        )
    if not ready:
        return Refused(
            Reason.NO_HEALTHY_ENDPOINT,
            f"{what} uses waypoint {key}, which has no ready pod; its traffic is refused"
            " rather than sent around the waypoint (is the waypoint deployed?)",
            service,
        )
    if any(w.uid == source.uid for _, w in ready):  # the waypoint's own traffic: no loop
        if service is not None:
            return _to_endpoint(snapshot, service, port, choose)
        assert isinstance(dst, Workload)
        return _to_pod(dst.ip, port, dst, None)
    by_uid = {w.uid: w for _, w in ready}
    endpoint = choose([e for e, _ in ready])
    pod = by_uid[endpoint.workload_uid]
    address = dst.vip if isinstance(dst, Service) else dst.ip
    return ViaWaypoint(
        dial=(endpoint.ip, HBONE_PORT),
        authority=f"{_host(address)}:{port}",
        expected_identity=pod.identity,
        waypoint=pod,
        service=service,
        dst_workload=dst if isinstance(dst, Workload) else None,
    )


def _to_pod(ip: str, port: int, workload: Workload | None, service: Service | None) -> Plan:
    if workload is not None and workload.meshed:
        return Direct(
            dial=(ip, HBONE_PORT),
            authority=f"{_host(ip)}:{port}",
            expected_identity=workload.identity,
            dst_workload=workload,
            service=service,
        )
    return Passthrough(dial=(ip, port), dst_workload=workload, service=service)


def _host(ip: str) -> str:
    """An IP as the host part of an authority (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip
