"""The waypoint process: ``ambit waypoint run``, what a waypoint's pod runs.

Start-up: the waypoint's own certificate from the CA (its service account's token as
proof: it can get only its own identity), then its namespace's view on the config
stream, then HBONE on 15008. Ports: 15008 HBONE, 15020 Prometheus (``/metrics``), 15021
readiness (``/healthz/ready``), 15000 admin on loopback (``/config_dump``). Ready once
it has a certificate and a config. On SIGTERM or SIGINT it drains as every ambit
process does: not ready at once, no new connection, a graceful GOAWAY on each HBONE
connection, requests in flight finish up to ``drain_seconds``, then the rest is cut.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry

from mesh.admin import announce_ready, json_response, metrics_route, ready_route, serve_http
from mesh.backoff import Backoff
from mesh.certs import open_issuing_manager
from mesh.concurrency import open_service_nursery
from mesh.config_stream import ConfigClient
from mesh.credential import Credential
from mesh.hbone.client import open_hbone_pool
from mesh.hbone.server import ServerConnections, serve_hbone
from mesh.http import Request, Response
from mesh.identity import SpiffeId, control_plane_identity
from mesh.issuer_process import ProcessIssuer
from mesh.memory import serve_heap_trimmer
from mesh.model import MeshSnapshot
from mesh.net import open_listener
from mesh.telemetry import open_line_batching
from waypoint.config import WaypointConfig
from waypoint.dispatch import Dispatcher
from waypoint.gate import Gate
from waypoint.jwks import JwksCache
from waypoint.proxy import WaypointProxy
from waypoint.request import WaypointScope
from waypoint.telemetry import RequestMetrics
from waypoint.upstream import H2Upstreams, Upstreams

log = structlog.get_logger("waypoint")
RETRY = Backoff(initial=0.2, maximum=10.0)


@dataclass(frozen=True)
class Listening:
    """Where a started waypoint listens (``port=0`` in the config picks a free one)."""

    hbone: tuple[str, int]
    admin: tuple[str, int]
    metrics: tuple[str, int]
    readiness: tuple[str, int]


class _State:
    def __init__(self) -> None:
        self.snapshot: MeshSnapshot | None = None
        self.draining = False
        self.gate: Gate | None = None

    async def on_update(self, snapshot: MeshSnapshot) -> None:
        self.snapshot = snapshot
        if self.gate is not None:
            self.gate.binds(snapshot)  # the key sets its rules name are fetched now
        await trio.lowlevel.checkpoint()

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining: the waypoint is shutting down"
        if self.snapshot is None:
            return False, "no config from the control plane yet"
        return True, f"config version {self.snapshot.version}"


async def run_waypoint(
    config: WaypointConfig, *, task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGTERM or SIGINT, then drain and return; ``started`` once it listens."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as stop_signals:
        async with open_line_batching():  # the access log: one write per scheduler pass
            await _run(config, stop_signals, task_status)


async def _run(
    config: WaypointConfig,
    stop_signals: AsyncIterator[int],
    task_status: trio.TaskStatus[Listening],
) -> None:
    registry = CollectorRegistry()
    state = _State()
    identity = config.identity
    # Its certificate from a helper process: this one never loads cryptography (8 MB).
    ca = ProcessIssuer(
        config.ca,
        token=config.token,
        bundle=config.bundle,
        trust_domain=config.trust_domain,
        ca_identity=control_plane_identity(config.trust_domain),
    )
    async with open_issuing_manager(ca) as certs:
        await certs.fetch_until_issued(identity, RETRY)

        def cert_for(_identity: SpiffeId) -> Credential:
            cert = certs.get(identity)
            if cert is None:
                raise RuntimeError(f"no certificate for {identity}")
            return cert

        def current() -> Credential:
            return cert_for(identity)

        async with (
            open_hbone_pool(cert_for) as control_pool,
            open_hbone_pool(cert_for) as pool,
            open_service_nursery() as upstream_tasks,
        ):
            upstreams = Upstreams(pool, lambda: identity)
            h2 = H2Upstreams(upstreams, upstream_tasks)
            jwks = JwksCache()  # key sets of the jwksUris the bound RequestAuthentications name
            key = f"{config.namespace}/{config.name}"
            state.gate = gate = Gate(WaypointScope(key), jwks)
            proxy = WaypointProxy(
                key,
                identity,
                snapshot=lambda: state.snapshot,
                upstreams=upstreams,
                metrics=RequestMetrics(registry),
                h2=h2,
                dispatcher=Dispatcher(gate),
            )
            connections = ServerConnections()

            def config_dump(_request: Request) -> Response:
                dump: dict[str, Any] = {
                    "waypoint": proxy.key,
                    "identity": str(identity),
                    "open_connections": proxy.open_connections,
                    "upstream": {"idle": upstreams.idle_count(), "opened": upstreams.opened},
                    "jwks": jwks.statistics(),
                    "config": state.snapshot.to_json() if state.snapshot else None,
                }
                return json_response(dump)

            async with trio.open_nursery() as handlers, trio.open_nursery() as nursery:
                client = ConfigClient(
                    control_pool,
                    source=identity,
                    address=config.control_plane,
                    expected=control_plane_identity(config.trust_domain),
                    node="",
                    token=None,
                    on_update=state.on_update,
                    role="waypoint",
                    namespace=config.namespace,
                    tap=proxy.metrics.tap,  # ambit tap: requests, over this stream
                )
                nursery.start_soon(client.run)
                nursery.start_soon(serve_heap_trimmer)
                nursery.start_soon(jwks.serve)
                ready = ready_route(state.ready)
                bound = []
                for routes, host, port in (
                    ({"/config_dump": config_dump, "/healthz/ready": ready}, "127.0.0.1",
                     config.admin_port),
                    ({"/metrics": metrics_route(registry)}, config.listen_ip,
                     config.metrics_port),
                    ({"/healthz/ready": ready}, config.listen_ip, config.readiness_port),
                ):  # fmt: skip
                    bound.append(await nursery.start(_serve, routes, host, port))
                accepting = trio.CancelScope()

                # SO_REUSEPORT: during a restart the new waypoint serves beside the old.
                listener = await open_listener(config.listen_ip, config.hbone_port,
                                               reuse_port=True)  # fmt: skip

                async def hbone(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                    with accepting:
                        await serve_hbone(
                            proxy.handle, certificate=current, listener=listener,
                            handler_nursery=handlers, connections=connections,
                            task_status=task_status,
                        )  # fmt: skip

                address = await nursery.start(hbone)
                log.info("waypoint_started", waypoint=proxy.key, identity=str(identity),
                         hbone=f"{address[0]}:{address[1]}")  # fmt: skip
                task_status.started(Listening(address, *bound))
                if config.ready_file is not None:
                    nursery.start_soon(announce_ready, state.ready, config.ready_file)
                async for signum in stop_signals:
                    log.info("waypoint_stopping", signal=signal.Signals(signum).name)
                    break
                state.draining = True
                accepting.cancel()
                await connections.drain()
                log.info("waypoint_draining", connections=proxy.open_connections,
                         seconds=config.drain_seconds)  # fmt: skip
                with trio.move_on_after(config.drain_seconds) as waited:
                    while proxy.open_connections:  # noqa: ASYNC110 - no event for it
                        await trio.sleep(0.05)
                log.info("waypoint_drained", cut_at_deadline=proxy.open_connections
                         if waited.cancelled_caught else 0)  # fmt: skip
                handlers.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
            h2.close()
            await upstreams.aclose()


async def _serve(
    routes: dict[str, Any], host: str, port: int, *, task_status: trio.TaskStatus[tuple[str, int]]
) -> None:
    await serve_http(routes, host=host, port=port, reuse_port=True, task_status=task_status)
