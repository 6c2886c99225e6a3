"""The ztunnel process of one node: certificates, config stream, pods, ports.

Start-up: fetch ztunnel's own certificate from the CA (proving the node with
its token), subscribe to the config stream, and serve the node's meshed
pods: those the node agent hands over the pods socket (:mod:`ztunnel.zds`; on
Kubernetes and in local mode alike). Ports: admin 15000 on loopback (``/config_dump``),
Prometheus 15020 and readiness 15021 on the node's address.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry

from mesh.admin import announce_ready, json_response, metrics_route, ready_route, serve_http
from mesh.backoff import Backoff
from mesh.ca_client import CaClient
from mesh.certs import open_certificate_manager
from mesh.config_stream import ConfigClient
from mesh.constants import (
    ADMIN_PORT,
    DEFAULT_TRUST_DOMAIN,
    METRICS_PORT,
    READINESS_PORT,
    SYSTEM_NAMESPACE,
    ZTUNNEL_SERVICE_ACCOUNT,
)
from mesh.hbone.client import open_hbone_pool
from mesh.http import Request, Response
from mesh.identity import (
    SpiffeId,
    TrustBundle,
    WorkloadCertificate,
    control_plane_identity,
)
from mesh.memory import serve_heap_trimmer
from mesh.metrics import TcpMetrics
from mesh.pending import PendingLimits
from mesh.tokens import Token
from ztunnel.telemetry import ZtunnelTelemetry
from ztunnel.zds import ZdsServer
from ztunnel.ztunnel import Ztunnel

log = structlog.get_logger("ztunnel")
RETRY = Backoff(initial=0.2, maximum=10.0)  # ztunnel's own certificate, at start


@dataclass(frozen=True)
class ZtunnelConfig:
    node: str
    control_plane: tuple[str, int]
    ca: tuple[str, int]
    token: Token  # re-read as it rotates (mesh.tokens.TokenFile)
    bundle: TrustBundle
    pods_socket: Path  # where the node agent hands pods over (ztunnel binds it)
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # ztunnel's own ServiceAccount (namespace, name): its identity for the CA and the
    # config stream; the control plane's --ztunnel-service-account names the same.
    service_account: tuple[str, str] = (SYSTEM_NAMESPACE, ZTUNNEL_SERVICE_ACCOUNT)
    listen_ip: str = "0.0.0.0"
    admin_port: int = ADMIN_PORT
    metrics_port: int = METRICS_PORT
    readiness_port: int = READINESS_PORT
    # How long open connections may finish after SIGTERM: a few seconds below a pod's
    # terminationGracePeriodSeconds (30 by default), so the kubelet's SIGKILL never comes first.
    drain_seconds: float = 25.0
    # Written ({"pid": ..., "ready": true}) the first time this ztunnel is ready: what
    # a hand-over waits for before it tells the old ztunnel to drain.
    ready_file: Path | None = None
    # Connections waiting for their destination, or half-closed, per source and overall.
    limits: PendingLimits = field(default_factory=PendingLimits)

    @property
    def identity(self) -> SpiffeId:
        """ztunnel's own identity (its ServiceAccount's)."""
        return SpiffeId(self.trust_domain, *self.service_account)


async def run_ztunnel(
    config: ZtunnelConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGTERM or SIGINT, then drain (:meth:`Ztunnel.drain`) and return."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as stop_signals:
        await _run(config, stop_signals, task_status)


async def _run(
    config: ZtunnelConfig,
    stop_signals: AsyncIterator[int],
    task_status: trio.TaskStatus[None],
) -> None:
    registry = CollectorRegistry()
    telemetry = ZtunnelTelemetry(TcpMetrics(registry))
    ca = CaClient(
        config.ca,
        token=config.token,
        bundle=config.bundle,
        trust_domain=config.trust_domain,
        ca_identity=control_plane_identity(config.trust_domain),
    )
    async with open_certificate_manager(ca) as certs:
        await certs.fetch_until_issued(config.identity, RETRY)

        def cert_for(identity: SpiffeId) -> WorkloadCertificate:
            cert = certs.get(identity)
            if cert is None:
                raise RuntimeError(f"no certificate for {identity}")
            return cert

        async with open_hbone_pool(cert_for) as control_pool:
            zt = Ztunnel(
                node=config.node,
                certificates=certs,
                netns_for=None,  # the agent names each pod's namespace
                telemetry=telemetry,
                limits=config.limits,
            )

            def config_dump(_request: Request) -> Response:
                dump: dict[str, Any] = zt.status()
                dump["config"] = zt.snapshot.to_json() if zt.snapshot else None
                return json_response(dump)

            async with trio.open_nursery() as nursery:
                await nursery.start(zt.run)
                zds = ZdsServer(zt, config.pods_socket, trust_domain=config.trust_domain)
                await nursery.start(zds.serve)
                client = ConfigClient(
                    control_pool,
                    source=config.identity,
                    address=config.control_plane,
                    expected=control_plane_identity(config.trust_domain),
                    node=config.node,
                    token=config.token,
                    on_update=zt.on_update,
                    tap=telemetry.tap,  # ambit tap: connections, over this stream
                )
                nursery.start_soon(client.run)
                nursery.start_soon(telemetry.flush_periodically)
                nursery.start_soon(serve_heap_trimmer)  # RSS falls back after bursts
                ready = ready_route(zt.ready)
                admin = {"/config_dump": config_dump, "/healthz/ready": ready}
                for routes, host, port in (
                    (admin, "127.0.0.1", config.admin_port),
                    ({"/metrics": metrics_route(registry)}, config.listen_ip, config.metrics_port),
                    ({"/healthz/ready": ready}, config.listen_ip, config.readiness_port),
                ):
                    await nursery.start(_serve, routes, host, port)
                log.info("ztunnel_started", node=config.node, listen_ip=config.listen_ip)
                if config.ready_file is not None:
                    nursery.start_soon(_announce_ready, zt, config.ready_file)
                task_status.started()
                async for signum in stop_signals:
                    log.info("ztunnel_stopping", signal=signal.Signals(signum).name)
                    break
                await zt.drain(config.drain_seconds)
                nursery.cancel_scope.cancel()


async def _announce_ready(zt: Ztunnel, path: Path) -> None:
    """Write ``path`` once ``zt`` is first ready (it has config and every pod captured)."""
    if await announce_ready(zt.ready, path):
        log.info("ztunnel_ready", node=zt.node, pods=len(zt.status()["pods"]))


async def _serve(
    routes: dict[str, Any], host: str, port: int, *, task_status: trio.TaskStatus[Any]
) -> None:
    # SO_REUSEPORT: during a hand-over the new ztunnel serves these ports beside the old.
    await serve_http(routes, host=host, port=port, reuse_port=True, task_status=task_status)
