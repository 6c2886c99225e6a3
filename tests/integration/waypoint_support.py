"""A waypoint on loopback with everything around it real: certificates from a test root,
an HBONE server per endpoint pod playing the destination ztunnel (it checks the
waypoint's identity and dials the app), HTTP/1.1 apps written with h11, and a client
that opens CONNECT to the waypoint as a source ztunnel would."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import h11
import trio
from prometheus_client import CollectorRegistry

from mesh.hbone import HboneRequest, HboneStream
from mesh.hbone.client import HboneClientPool, open_hbone_pool
from mesh.hbone.server import serve_hbone
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot, Service, ServicePort
from mesh.relay import relay
from tests.builders import identity, service, snapshot, workload
from tests.pki import Pki
from tests.waiting import wait_until
from waypoint.dispatch import Dispatcher
from waypoint.gate import Gate
from waypoint.proxy import WaypointProxy
from waypoint.request import WaypointScope
from waypoint.telemetry import RequestMetrics
from waypoint.upstream import Balancer, H2Upstreams, Upstreams

WAYPOINT_ID = SpiffeId("cluster.local", "default", "waypoint")
SOURCE_ID = identity("default", "client")
VIP = "10.96.0.10"
CLIENT_IP = "10.0.0.20"


FLAKY: dict[str, int] = {}  # /flaky/ paths: requests seen so far
CHANCE = random.Random(1731)  # /chance/: the same draws each run


async def app_server(
    name: str, seen: list[tuple[str, str, str]] | None = None, *, task_status: trio.TaskStatus[int]
) -> None:
    """An HTTP/1.1 app: answers JSON naming itself with the request's method, path,
    headers and body (``/status/N`` answers N; ``/flaky/N/CODE/KEY`` answers CODE to the
    first N requests for that path, counted across every app of the process, then 200;
    ``/chance/P/CODE`` answers CODE to P% of the requests, drawn with a seeded generator;
    ``/broken/NAME`` answers 500 from the app ``NAME`` and 200 from the others;
    ``/delay/MS`` answers after MS ms; ``/ws`` with Upgrade switches to echo)."""

    async def serve(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        if not data and conn.their_state is not h11.SEND_BODY:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                        if conn.they_are_waiting_for_100_continue:
                            go_on = h11.InformationalResponse(status_code=100, headers=[])
                            await stream.send_all(conn.send(go_on) or b"")
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
                if request is None:
                    return
                headers = {k.decode(): v.decode() for k, v in request.headers}
                path = request.target.decode()
                if seen is not None:
                    seen.append((request.method.decode(), path, headers.get("host", "")))
                if path == "/ws" and "upgrade" in headers:
                    answer = h11.InformationalResponse(
                        status_code=101, headers=[("upgrade", "echo"), ("connection", "upgrade")]
                    )
                    await stream.send_all(conn.send(answer) or b"")
                    rest, _closed = conn.trailing_data
                    if rest:
                        await stream.send_all(rest)
                    while data := await stream.receive_some(65536):
                        await stream.send_all(data)
                    return
                status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
                if path.startswith("/chance/"):
                    _, _, percent, code = path.split("/", 3)
                    status = int(code) if CHANCE.random() * 100 < int(percent) else 200
                if path.startswith("/broken/"):
                    status = 500 if path.split("/")[2] == name else 200
                if path.startswith("/flaky/"):
                    _, _, failures, code, _key = path.split("/", 4)
                    FLAKY[path] = FLAKY.get(path, 0) + 1
                    status = int(code) if FLAKY[path] <= int(failures) else 200
                if "/delay/" in path:
                    await trio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
                payload = json.dumps(
                    {
                        "app": name,
                        "method": request.method.decode(),
                        "path": path,
                        "headers": headers,
                        "body": body.decode(errors="replace"),
                    }
                ).encode()
                response = h11.Response(
                    status_code=status,
                    headers=[("content-type", "application/json"),
                             ("content-length", str(len(payload)))],
                )  # fmt: skip
                await stream.send_all(conn.send(response) or b"")
                await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


@dataclass
class Pod:
    """A destination pod: its ztunnel's HBONE server and its app."""

    name: str
    ip: str
    hbone: tuple[str, int] = ("", 0)
    app_port: int = 0
    connects: list[SpiffeId] = field(default_factory=list)  # peers its ztunnel saw
    app: bool = True  # False: the test runs the app itself on ``app_port``
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, host)


async def destination_ztunnel(pod: Pod, pki: Pki, *, task_status: trio.TaskStatus[None]) -> None:
    """The pod's ztunnel: CONNECT from anyone with a mesh certificate to ``pod-ip:port``."""
    cert = pki.issue(identity("default", pod.name.rsplit("-", 1)[0]))

    async def handle(request: HboneRequest) -> None:
        pod.connects.append(request.peer)
        stream = await request.accept()
        app = await trio.open_tcp_stream("127.0.0.1", pod.app_port)
        async with app, stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await relay(stream, app)

    async with trio.open_nursery() as nursery:
        pod.hbone = await nursery.start(lambda task_status: serve_hbone(
            handle, certificate=lambda: cert, port=0, task_status=task_status))  # fmt: skip
        task_status.started()


@dataclass
class Mesh:
    """A running waypoint and what surrounds it."""

    pods: list[Pod]
    snapshot: MeshSnapshot
    proxy: WaypointProxy
    address: tuple[str, int]
    client: HboneClientPool
    registry: CollectorRegistry
    # Cancelling it stops the waypoint's server as its drain deadline does: every handler
    # cancelled, what they queued flushed, the connections closed.
    serving: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def source_ztunnel(
        self, authority: str = f"{VIP}:80", *, task_status: trio.TaskStatus[int]
    ) -> None:
        """A plain TCP port on loopback standing for a source pod's captured traffic: each
        connection becomes a CONNECT to the waypoint, so real clients (curl, grpcio) can be
        pointed at it."""

        async def tunnel(client: trio.SocketStream) -> None:
            async with client:
                stream = await self.connect(authority)
                async with stream:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await relay(client, stream)

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, tunnel, listeners)
            task_status.started(listeners[0].socket.getsockname()[1])

    def set_snapshot(self, snapshot: MeshSnapshot) -> None:
        self.snapshot = snapshot

    async def connect(self, authority: str = f"{VIP}:80") -> HboneStream:
        return await self.client.connect(
            source=SOURCE_ID, address=self.address, authority=authority,
            expected=[WAYPOINT_ID], source_address=CLIENT_IP,
        )  # fmt: skip

    async def requests_counted(self, **labels: str) -> None:
        """Wait until ``istio_requests_total`` counts one request with ``labels`` (the
        waypoint counts a request once its response is sent)."""
        await wait_until(lambda: self.metric("istio_requests_total", **labels) == 1)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


Ports = dict[int, int] | Iterable[ServicePort] | None


def web_snapshot(
    pods: list[Pod], *, waypoint: str | None = "default/waypoint", ports: Ports = None
) -> MeshSnapshot:
    """Service ``default/web`` (VIP :data:`VIP`, port 80 -> 8080 unless ``ports``) over
    ``pods``, bound to ``waypoint``; the client pod; the waypoint pod."""
    backends = [workload(p.name, ip=p.ip, labels={"app": "web"}, sa="web") for p in pods]
    web: Service = service("web", vip=VIP, ports=ports or {80: 8080}, backends=backends)
    web = Service(web.name, web.namespace, web.vip, web.ports, web.endpoints, waypoint=waypoint)
    client = workload("client", ip=CLIENT_IP, labels={"app": "client", "version": "v1"})
    waypoint_pod = workload("waypoint-0", ip="10.0.0.30", sa="waypoint")
    return snapshot(web, *backends, client, waypoint_pod)


@contextlib.asynccontextmanager
async def open_mesh(
    pki: Pki,
    pods: list[Pod],
    *,
    ports: Ports = None,
    snapshot: MeshSnapshot | None = None,
    gate: Gate | None = None,
) -> AsyncIterator[Mesh]:
    """The waypoint ``default/waypoint`` serving ``snapshot`` (default: :func:`web_snapshot`
    of ``pods``), each pod with its ztunnel and app; ``gate``: the waypoint's own (with
    its ``JwksCache``), else one with inline keys only."""
    registry = CollectorRegistry()
    async with trio.open_nursery() as nursery:
        for pod in pods:
            if pod.app:
                pod.app_port = await nursery.start(app_server, pod.name, pod.seen)
            await nursery.start(destination_ztunnel, pod, pki)
        by_ip = {(p.ip, 15008): p for p in pods}

        async def dial(address: tuple[str, int]) -> trio.socket.SocketType:
            pod = by_ip.get(address)
            if pod is None or pod.hbone == ("", 0):
                raise ConnectionRefusedError(111, "no such pod")
            sock = trio.socket.socket()
            await sock.connect(pod.hbone)
            return sock

        waypoint_cert = pki.issue(WAYPOINT_ID)
        client_cert = pki.issue(SOURCE_ID)
        state: dict[str, MeshSnapshot] = {"s": snapshot or web_snapshot(pods, ports=ports)}
        async with (
            open_hbone_pool(lambda _s: waypoint_cert, dial=dial) as upstream_pool,
            open_hbone_pool(lambda _s: client_cert) as client_pool,
        ):
            upstreams = Upstreams(upstream_pool, lambda: WAYPOINT_ID)
            proxy = WaypointProxy(
                "default/waypoint", WAYPOINT_ID, snapshot=lambda: state["s"],
                upstreams=upstreams, metrics=RequestMetrics(registry),
                h2=H2Upstreams(upstreams, nursery),
                # Seeded: a weighted split lands the same way each run (no flaky tolerance).
                dispatcher=Dispatcher(gate or Gate(WaypointScope("default/waypoint")),
                                      random.Random(7)),
                balancer=Balancer(random.Random(7)),
            )  # fmt: skip
            serving = trio.CancelScope()

            async def serve(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                with serving:
                    await serve_hbone(proxy.handle, certificate=lambda: waypoint_cert, port=0,
                                      task_status=task_status)  # fmt: skip

            address = await nursery.start(serve)
            mesh = Mesh(pods, state["s"], proxy, address, client_pool, registry, serving)

            def current() -> MeshSnapshot:
                return mesh.snapshot

            proxy.snapshot = current
            yield mesh
            await upstreams.aclose()
        nursery.cancel_scope.cancel()


class Client:
    """HTTP/1.1 over one CONNECT stream, with h11: what a curl in the source pod sends."""

    def __init__(self, stream: HboneStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, path: str, *, headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None, chunks: list[bytes] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        hdrs = [("host", "web.default.svc.cluster.local"), *(headers or [])]
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        if chunks is not None:
            hdrs.append(("transfer-encoding", "chunked"))
        out = self.conn.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        for piece in [body] if body is not None else chunks or []:
            out += self.conn.send(h11.Data(data=piece)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return status, headers, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return status, headers, bytes(body)
