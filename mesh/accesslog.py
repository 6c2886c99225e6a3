"""One access-log event per connection, shaped like Istio ztunnel's.

The event is ``connection_complete`` (or ``connection_denied`` when policy refused
it) with a fixed set of keys, always all present (``None`` when unknown), so a
log pipeline can index them: ``direction``, ``src.addr``, ``src.workload``,
``src.namespace``, ``src.identity``, ``dst.addr``, ``dst.service``,
``dst.workload``, ``dst.namespace``, ``dst.identity``, ``bytes_sent``,
``bytes_recv``, ``duration_ms``, ``reason`` (a :class:`~mesh.reason.Reason` code)
and ``error`` (what happened, in words). Bytes are counted as in
:mod:`mesh.metrics`: ``bytes_recv`` came from the client, ``bytes_sent`` went
back to it. Workloads are named by pod, as ztunnel does (metrics name the
Deployment). A completed connection logs at info, a denied or failed one
(``reason`` given) at warning.
"""

from __future__ import annotations

from typing import Any, Final

import structlog

from mesh.identity import SpiffeId
from mesh.model import Service, Workload
from mesh.reason import Failure
from mesh.record import Direction

log = structlog.get_logger("ztunnel.access")

EVENT_COMPLETE: Final = "connection_complete"
EVENT_DENIED: Final = "connection_denied"
KEYS: Final = (
    "direction",
    "src.addr",
    "src.workload",
    "src.namespace",
    "src.identity",
    "dst.addr",
    "dst.service",
    "dst.workload",
    "dst.namespace",
    "dst.identity",
    "bytes_sent",
    "bytes_recv",
    "duration_ms",
    "reason",
    "error",
)


def log_connection(
    *,
    direction: Direction,
    src_addr: str,
    dst_addr: str,
    src_workload: Workload | None = None,
    src_identity: SpiffeId | None = None,
    dst_workload: Workload | None = None,
    dst_service: Service | None = None,
    dst_identity: SpiffeId | None = None,
    bytes_sent: int = 0,
    bytes_recv: int = 0,
    duration_ms: float = 0.0,
    denied: bool = False,
    failure: Failure | None = None,
) -> None:
    """Log one finished connection. Addresses are ``ip:port``; identities are the ones proved
    (``None`` for plaintext); ``failure`` says why it was denied or failed."""
    fields: dict[str, Any] = {
        "direction": direction,
        "src.addr": src_addr,
        "src.workload": src_workload.name if src_workload else None,
        "src.namespace": src_workload.namespace if src_workload else None,
        "src.identity": str(src_identity) if src_identity else None,
        "dst.addr": dst_addr,
        "dst.service": dst_service.hostname if dst_service else None,
        "dst.workload": dst_workload.name if dst_workload else None,
        "dst.namespace": dst_workload.namespace if dst_workload else None,
        "dst.identity": str(dst_identity) if dst_identity else None,
        "bytes_sent": bytes_sent,
        "bytes_recv": bytes_recv,
        "duration_ms": round(duration_ms, 3),
        "reason": failure.reason.value if failure else None,
        "error": failure.detail if failure else None,
    }
    event = EVENT_DENIED if denied else EVENT_COMPLETE
    if denied or failure is not None:
        log.warning(event, **fields)
    else:
        log.info(event, **fields)
