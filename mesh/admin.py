"""The small HTTP/1.1 server behind every proxy's management ports.

Serves the admin port (15000: ``/config_dump``), Prometheus
``/metrics`` (15020) and ``/healthz/ready`` (15021). The protocol is h11's
sans-IO state machine; this module is the thin Trio loop around it, plus the
routes every proxy shares (:func:`metrics_route`, :func:`ready_route`).

Only ``GET`` and ``HEAD`` are served (``405`` otherwise), an unknown path gets
``404`` listing the known ones, and a route that raises gives ``500`` with its
traceback logged. Connections are kept alive. A client is bounded in size
(header block ``431``, body ``413``) and time (a request not complete in
``request_timeout`` gets ``408``); garbage gets ``400``. Such a client is
answered, logged once (``admin_bad_request``) and closed; others are unaffected.
With an ``ssl_context`` the same server speaks HTTPS (local mode's stand-in API server
for the CNI plugin, :mod:`k8s.localapi`); a failed handshake is logged once.
"""

from __future__ import annotations

import inspect
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Metric, generate_latest
from prometheus_client.core import GaugeMetricFamily

from mesh import http
from mesh.http import Request, Response
from mesh.net import open_listener, serve_listeners

log = structlog.get_logger("mesh.admin")

METHODS = ("GET", "HEAD")
READ_SIZE = 16 * 1024
LINGER_SECONDS = 1.0  # after our last byte, how long to drain a client before closing
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 21\r\nconnection: close\r\n\r\n"
    b"too many connections\n"
)


Route: TypeAlias = Callable[[Request], Response | Awaitable[Response]]


@dataclass(frozen=True)
class Limits:
    """How much a client may send, and how long it may take."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    request_timeout: float = 10.0  # a request, from its first byte (or the accept) to its end
    idle_timeout: float = 60.0  # a kept-alive connection between requests
    max_connections: int = 64  # beyond this, the oldest idle one is closed (503 if none is)


def json_response(obj: Any, status: int = 200) -> Response:
    """``obj`` as indented JSON, for the people who read admin pages."""
    return http.json_response(obj, status, indent=2)


def metrics_route(registry: CollectorRegistry, *, started: float | None = None) -> Route:
    """``/metrics``: the Prometheus text exposition of ``registry``, without prometheus_client's
    ``*_created`` series (Istio's proxies have none; dashboards would see extra names), with
    ``process_start_time_seconds``: ``started``, this process's start by default (a test
    serving a proxy's registry in its own process says when that proxy began)."""
    collector = _WithoutCreated(registry, PROCESS_STARTED if started is None else started)

    def metrics(_request: Request) -> Response:
        return Response(200, generate_latest(collector), CONTENT_TYPE_LATEST)

    return metrics


class _WithoutCreated:
    """``registry``'s metric families, minus the ``_created`` sample of each counter, histogram
    and summary (a per-route choice, unlike prometheus_client's process-wide switch), plus
    ``process_start_time_seconds`` (Prometheus's usual name): every counter began after it,
    which is what the control plane's observer needs to count a new proxy's first requests
    (:meth:`mesh.traffic_graph.History.increases`)."""

    def __init__(self, registry: CollectorRegistry, started: float) -> None:
        self.registry = registry
        self.started = started

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.type in ("counter", "histogram", "summary"):
                created = f"{family.name}_created"
                family.samples = [s for s in family.samples if s.name != created]
            yield family
        yield GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
            value=self.started,
        )  # fmt: skip


def _process_started() -> float:
    """This process's start (unix time), from /proc as ``ps`` reads it; now, elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))  # fmt: skip
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_STARTED: Final = _process_started()


def ready_route(is_ready: Callable[[], tuple[bool, str]]) -> Route:
    """``/healthz/ready``: ``200 ready`` or ``503`` with the reason ``is_ready`` gives."""

    def ready(_request: Request) -> Response:
        ok, reason = is_ready()
        return Response(200, b"ready\n") if ok else Response(503, f"{reason}\n".encode())

    return ready


async def serve_http(
    routes: Mapping[str, Route],
    *,
    host: str,
    port: int,
    listener: trio.socket.SocketType | None = None,
    limits: Limits | None = None,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` (exact paths) until cancelled; ``task_status.started`` gets the bound
    ``(host, port)``. A ``listener`` passed in (made inside a pod's netns) is served instead of
    binding ``host:port``, and is closed on return like our own. With ``ssl_context``, each
    connection is TLS (its handshake bounded by the request timeout)."""
    limits = limits or Limits()
    sock = (
        listener
        if listener is not None
        else await open_listener(host, port, backlog=128, reuse_port=reuse_port)
    )
    bound = sock.getsockname()
    open_: dict[_Connection, None] = {}  # oldest first

    async def handle(plain: trio.SocketStream) -> None:
        peer = plain.socket.getpeername()
        stream: trio.abc.Stream = plain
        if ssl_context is not None:
            stream = trio.SSLStream(plain, ssl_context, server_side=True, https_compatible=True)
            try:
                with trio.fail_after(limits.request_timeout):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                cause = exc.__cause__ or exc
                log.warning("admin_tls_handshake_failed", peer=f"{peer[0]}:{peer[1]}",
                            reason=str(cause) or type(cause).__name__)  # fmt: skip
                await plain.aclose()
                return
        if len(open_) >= limits.max_connections:
            # At the cap, the oldest connection that waits for a request makes room, so
            # idle keep-alives never lock a kubelet's probe out; if every one is busy,
            # the newcomer is answered 503 at once.
            idle = next((c for c in open_ if c.idle), None)
            if idle is None:
                await stream.send_all(_TOO_MANY)
                await _linger_close(stream)  # so the 503 is read, not lost to a reset
                return
            log.info("admin_idle_connection_closed", peer=idle.peer, open=len(open_))
            idle.close_now()
            del open_[idle]
        connection = _Connection(stream, peer, routes, limits)
        open_[connection] = None
        try:
            await connection.run()
        finally:
            open_.pop(connection, None)

    async with trio.open_nursery() as handlers:
        await handlers.start(
            partial(serve_listeners, handle, [sock], handler_nursery=handlers, name="admin")
        )
        task_status.started((bound[0], bound[1]))


class _Reject(Exception):
    """The client is answered with ``status`` and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        addr: Any,
        routes: Mapping[str, Route],
        limits: Limits,
    ) -> None:
        self.stream = stream
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.routes = routes
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.idle = False  # waiting for the first byte of a request
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        """Serve requests until the client is done; errors go to the listener's boundary."""
        try:
            with self._scope:
                await self._serve()
        finally:
            await self._close()

    def close_now(self) -> None:
        """Make room: end the connection (it must be idle, between requests)."""
        self._scope.cancel()

    async def _serve(self) -> None:
        first = True
        while True:
            try:
                request = await self._receive(first)
            except _Reject as reject:
                log.warning(
                    "admin_bad_request", peer=self.peer, status=reject.status, reason=reject.reason
                )
                if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(None, Response(reject.status, f"{reject.reason}\n".encode()))
                return
            if request is None:
                return
            await self._send(request, await self._dispatch(request))
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # Connection: close, HTTP/1.0, or an unread body
            self.h11.start_next_cycle()
            first = False

    async def _receive(self, first: bool) -> Request | None:
        """The next request; ``None`` if the client closed or idled out between requests."""
        limits, conn = self.limits, self.h11
        started = first or bool(conn.trailing_data[0])
        timeout = limits.request_timeout if started else limits.idle_timeout
        deadline = trio.current_time() + timeout
        head: h11.Request | None = None
        body = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Reject(exc.error_status_hint, f"bad request: {exc}") from None
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline):
                    self.idle = not started
                    try:
                        data = await self.stream.receive_some(READ_SIZE)
                    finally:
                        self.idle = False
                    if data and not started:
                        started = True
                        deadline = trio.current_time() + limits.request_timeout
                    conn.receive_data(bytes(data))
                    continue
                if not started:
                    return None
                raise _Reject(408, f"request not complete within {limits.request_timeout:g}s")
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                head = event
                # h11 bounds a head still arriving; one that came whole in a read is checked here
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > limits.max_header_bytes:
                    raise _Reject(431, f"request head over {limits.max_header_bytes} bytes")
                length = dict(event.headers).get(b"content-length", b"0")
                if int(length) > limits.max_body_bytes:
                    raise _Reject(413, f"body over {limits.max_body_bytes} bytes")
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > limits.max_body_bytes:
                    raise _Reject(413, f"body over {limits.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return _request(head)

    async def _dispatch(self, request: Request) -> Response:
        if request.method not in METHODS:
            body = f"method {request.method} not allowed; use {' or '.join(METHODS)}\n"
            return Response(405, body.encode(), headers=(("allow", ", ".join(METHODS)),))
        route = self.routes.get(request.path)
        if route is None:
            known = "".join(f"  {path}\n" for path in sorted(self.routes))
            return Response(404, f"no route for {request.path}; known paths:\n{known}".encode())
        try:
            result = route(request)
            response = await result if inspect.isawaitable(result) else result
            if not isinstance(response, Response):
                raise TypeError(f"route returned {type(response).__name__}, not a Response")
            return response
        except Exception:
            log.exception("admin_route_failed", peer=self.peer, path=request.path)
            return Response(500, f"internal error serving {request.path}; see the log\n".encode())

    async def _send(self, request: Request | None, response: Response) -> None:
        """Send ``response`` (no body for HEAD); ``request=None`` answers a rejected one."""
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("server", "ambit"),
            *response.headers,
        ]
        if request is None:
            headers.append(("connection", "close"))
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        events: list[h11.Event] = [
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        ]
        if request is None or request.method != "HEAD":
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        out = b"".join(self.h11.send(event) or b"" for event in events)
        with trio.move_on_after(self.limits.request_timeout):
            await self.stream.send_all(out)
            return
        raise trio.BrokenResourceError("client did not read the response in time")

    async def _close(self) -> None:
        await _linger_close(self.stream)


async def _linger_close(stream: trio.abc.Stream) -> None:
    """Half-close, drain what the client still sends (so our last response is not lost to a
    reset), then close. TLS has no half-close: its stream is closed with close_notify."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        with trio.move_on_after(LINGER_SECONDS) as scope:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(stream)
        return
    try:
        with trio.move_on_after(LINGER_SECONDS):
            await stream.send_eof()
            drained = 0
            while drained < 4 * READ_SIZE and (data := await stream.receive_some()):
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


def _request(head: h11.Request) -> Request:
    target = urlsplit(head.target.decode("ascii", "replace"))
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(
        method=head.method.decode("ascii"),
        path=unquote(target.path) or "/",
        query=dict(parse_qsl(target.query, keep_blank_values=True)),
        headers=headers,
    )


async def announce_ready(
    is_ready: Callable[[], tuple[bool, str]], path: Path, *, poll: float = 0.05
) -> bool:
    """Write ``path`` (``{"pid": ..., "ready": true}``) once ``is_ready`` first says so: what
    a hand-over waits for before it tells the old process to drain. False (logged) when the
    file cannot be written; serving goes on either way."""
    while not is_ready()[0]:  # noqa: ASYNC110 - readiness has no event: pods come and go
        await trio.sleep(poll)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps({"pid": os.getpid(), "ready": True}))
        os.replace(temporary, path)
    except OSError as exc:
        log.error("ready_file_unwritable", path=str(path), reason=str(exc))
        return False
    return True
