"""One proxied connection as telemetry sees it, shared by every proxy.

A :class:`ConnectionRecord` says who talked to whom (addresses, workloads,
proved identity, the Service), whether the hop was mutual TLS, and counts the
bytes while the connection is open. A proxy reports records to a
:class:`Telemetry`: ``opened``, then ``closed`` (with a
:class:`~mesh.reason.Failure` if it broke), or ``denied`` instead of both when
it never opened. ``log=False`` counts a connection without its access-log line:
for connections shed under load (:mod:`mesh.pending`), which the proxy
summarises instead, so that a flood does not flood the log too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

from mesh.identity import SpiffeId
from mesh.model import Service, Workload
from mesh.reason import Failure
from mesh.relay import RelayStats

Direction: TypeAlias = Literal["inbound", "outbound"]


@dataclass
class ConnectionRecord:
    """Who talked to whom, for metrics, the access log and policy re-checks."""

    direction: Direction
    src_addr: tuple[str, int]
    dst_addr: tuple[str, int]
    src_workload: Workload | None = None
    src_identity: SpiffeId | None = None
    dst_workload: Workload | None = None
    dst_service: Service | None = None
    mtls: bool = False
    started: float = field(default_factory=time.monotonic)
    stats: RelayStats = field(default_factory=RelayStats)


class Telemetry(Protocol):
    def opened(self, record: ConnectionRecord) -> None: ...
    def closed(
        self, record: ConnectionRecord, failure: Failure | None, *, log: bool = True
    ) -> None: ...
    def denied(self, record: ConnectionRecord, failure: Failure, *, log: bool = True) -> None: ...
