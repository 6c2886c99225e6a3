"""Outbound planning: where a captured connection goes, decided by a pure function.

Given the mesh snapshot, the source workload and the original destination
(``SO_ORIGINAL_DST``), :func:`plan_outbound` answers: dial the destination pod's HBONE
port with mutual TLS and ``CONNECT <pod-ip>:<target-port>`` expecting the pod's
identity (``kind="hbone"``), or pass the bytes through as plain TCP
(``kind="passthrough"``: an unmeshed pod, or an address the mesh does not know).
A Service VIP is first resolved to one endpoint and the service port to its target
port on that pod. Carrying the plan out (sockets, pool) is ``ztunnel.outbound``'s job.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mesh.constants import HBONE_PORT
from mesh.identity import SpiffeId
from mesh.model import Endpoint, MeshSnapshot, Service, Workload

Pick = Callable[[Sequence[Endpoint]], Endpoint]


class PlanError(Exception):
    """No plan can be made; the message says why and what to check."""


class UnknownServicePort(PlanError):
    """The destination is a Service VIP, but not one of the Service's ports."""


class NoHealthyEndpoint(PlanError):
    """The destination Service has no endpoint for the port."""


@dataclass(frozen=True)
class Plan:
    kind: Literal["hbone", "passthrough"]
    dial: tuple[str, int]  # the address to connect to
    source_identity: SpiffeId  # the certificate to present (pools are keyed by it)
    authority: str | None = None  # CONNECT target, "pod-ip:target-port" (hbone only)
    expected_identity: SpiffeId | None = None  # the peer must prove this (hbone only)
    dst_workload: Workload | None = None  # the destination pod, when the mesh knows it
    service: Service | None = None  # the Service the VIP belonged to, if any


def plan_outbound(
    snapshot: MeshSnapshot,
    source: Workload,
    dst_ip: str,
    dst_port: int,
    *,
    pick: Pick | None = None,
) -> Plan:
    """Plan the connection ``source`` opened to ``dst_ip:dst_port``.

    ``pick`` chooses among a Service's endpoints (default: at random); raises
    :class:`UnknownServicePort` or :class:`NoHealthyEndpoint` for a VIP that cannot be served.
    """
    service = snapshot.service_by_vip(dst_ip)
    if service is None:
        return _to_pod(source, dst_ip, dst_port, snapshot.workload_by_ip(dst_ip), None)
    if service.port(dst_port) is None:
        defined = ", ".join(f"{p.port}" + (f" ({p.name})" if p.name else "") for p in service.ports)
        raise UnknownServicePort(
            f"service {service.key} ({service.vip}) has no port {dst_port}; it defines"
            f" {defined or 'no ports'}: does the client use the service port (not the pod's)?"
        )
    candidates = [e for e in service.endpoints if e.target_for(dst_port) is not None]
    if not candidates:
        raise NoHealthyEndpoint(
            f"service {service.key} has no endpoint for port {dst_port}: no running pod with an"
            " IP matches its selector (or none has its named targetPort); check the pods'"
            " labels and status"
        )
    endpoint = (pick or random.choice)(candidates)
    target = endpoint.target_for(dst_port)
    assert target is not None
    workload = snapshot.workload(endpoint.workload_uid)
    return _to_pod(source, endpoint.ip, target, workload, service)


def _to_pod(
    source: Workload, ip: str, port: int, workload: Workload | None, service: Service | None
) -> Plan:
    if workload is not None and workload.meshed:
        return Plan(
            kind="hbone",
            dial=(ip, HBONE_PORT),
            source_identity=source.identity,
            authority=f"{_host(ip)}:{port}",
            expected_identity=workload.identity,
            dst_workload=workload,
            service=service,
        )
    return Plan(
        kind="passthrough",
        dial=(ip, port),
        source_identity=source.identity,
        dst_workload=workload,
        service=service,
    )


def _host(ip: str) -> str:
    """An IP as the host part of an authority (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip
