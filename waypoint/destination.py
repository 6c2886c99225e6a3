"""Who asked the waypoint for what: the :class:`Destination` of a CONNECT (a Service port
bound to this waypoint, or a pod) and its :class:`Caller`. Pure values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot, Service, Workload
from waypoint.upstream import Target, targets_of


def meshed_identity(snapshot: MeshSnapshot) -> Callable[[str], SpiffeId | None]:
    """The identity a workload proves on its HBONE port, by uid (None: not in the mesh)."""

    def identity_of(uid: str) -> SpiffeId | None:
        w = snapshot.workload(uid)
        return w.identity if w is not None and w.meshed else None

    return identity_of


@dataclass(frozen=True)
class Destination:
    """What a CONNECT asked for: a Service port bound to this waypoint, or a pod."""

    ip: str
    port: int
    service: Service | None
    workload: Workload | None  # pod-IP traffic: the pod; no Service routes apply

    @property
    def authority(self) -> str:
        """``ip:port``, as a Host header would say it."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    def targets(self, snapshot: MeshSnapshot) -> list[Target]:
        """Where its traffic may go: the Service's endpoints for the port, or the pod."""
        if self.service is not None:
            service = snapshot.service(self.service.key)  # as the snapshot has it now
            endpoints = service.endpoints if service is not None else ()
            return targets_of(endpoints, self.port, meshed_identity(snapshot))
        w = self.workload
        if w is None or not w.meshed:
            return []
        return [Target(w.ip, self.port, w.identity, w.uid)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: the identity the source ztunnel proved (the source workload's), its
    workload when the snapshot knows it, and its address."""

    identity: SpiffeId
    workload: Workload | None
    address: str
    baggage: Mapping[str, str] = field(default_factory=dict)  # the source ztunnel's
