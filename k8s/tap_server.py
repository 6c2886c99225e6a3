"""The control plane's tap API: ``ambit tap`` streams live events from here.

``GET /v1/tap?target=pod/NS/NAME&to=...&method=M&path=P&status=N`` over HTTPS/1.1 on
:data:`mesh.constants.TAP_PORT` (the control plane's own certificate,
``spiffe://<td>/ns/ambit-system/sa/ambit-controlplane``, no client certificate), with
``authorization: Bearer <token>``. The answer is ``application/x-ndjson``, chunked, until
the client goes away: first ``{"type": "started", "id": ..., "proxies": [...]}``, then
one ``{"type": "event", "proxy": ..., ...}`` per event (:class:`mesh.tap.TapEvent`'s
fields) and ``{"type": "dropped", "count": N}`` when events were lost (a proxy's buffer
full, or this reader too slow: the control plane never waits for it).

``GET /v1/snapshot`` on the same port, with the same token, answers the control plane's
published snapshot as one JSON line (503 before the first): what ``ambit why`` evaluates,
with ``ambit-source-read``: what the snapshot reflects in its source's words (local mode:
a digest of the objects files it read, :func:`k8s.files_source.read_mark`).
Other ``pages`` (``ambit dashboard``'s, :mod:`k8s.dashboard`) are served the same way:
GET, the same token, authorized as the snapshot is (they show the mesh's config).

Who may tap is asked of a :class:`TapAuthenticator` with the bearer token and the filter,
before the tap opens: 401 without a token or with an unknown one, 403 when the caller may
not tap that target, 503 when it could not be checked. Local mode's is
:class:`TokenTapAuthenticator` (tokens from a file the cluster writes, 0600); on Kubernetes
the same interface can ask the API server (a TokenReview, then a SubjectAccessReview of
verb ``tap`` on the ``pods/tap``, ``services/tap`` or ``namespaces/tap`` subresource of
the target, as ``linkerd viz tap`` does), which is not built yet. The proxies' admin
ports are never involved: events come over their config streams (:mod:`k8s.tap_hub`).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlsplit

import h11
import structlog
import trio

from k8s.tap_hub import TapHub, TooManyTaps
from mesh.http import Response
from mesh.identity import WorkloadCertificate
from mesh.net import open_listener, serve_listeners
from mesh.tap import TapFilter, TapFilterError
from mesh.tls import server_context
from mesh.tokens import TokenTable

log = structlog.get_logger("k8s.tap")
Snapshot = Callable[[], dict[str, Any] | None]
Page = Callable[[dict[str, str]], Awaitable[Response]]
"""A page of the API: the query in, the answer out."""

TAP_PATH: Final = "/v1/tap"
SNAPSHOT_PATH: Final = "/v1/snapshot"  # the model as published: what ``ambit why`` evaluates
SOURCE_READ_HEADER: Final = "ambit-source-read"
REQUEST_TIMEOUT: Final = 10.0  # TLS handshake and request head
MAX_HEAD: Final = 16 * 1024
DROPPED_EVERY: Final = 1.0  # seconds: how often lost events are reported when none arrive


@dataclass(frozen=True)
class TapRefusal:
    status: int  # 401, 403 or 503
    reason: str


class TapAuthenticator(Protocol):
    async def authorize(self, token: str | None, tap: TapFilter | None) -> str | TapRefusal:
        """The caller's name if the bearer ``token`` may open ``tap`` (None: read the
        mesh's config, ``/v1/snapshot``), else why not."""
        ...


class TokenTapAuthenticator:
    """Whoever holds a token of ``tokens`` may tap anything (local mode's cluster admin)."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens

    async def authorize(self, token: str | None, tap: TapFilter | None) -> str | TapRefusal:
        await trio.lowlevel.checkpoint()
        if token is None:
            return TapRefusal(401, "no bearer token: ambit tap reads it from the state dir")
        caller = self.tokens.caller_for(token)
        if caller is None:
            return TapRefusal(401, "unknown bearer token")
        return caller


class _Reply(Exception):
    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(reason)
        self.status = status
        self.headers = headers


class _Contexts:
    """One TLS context per certificate of the control plane (it is renewed)."""

    def __init__(self, certificate: Callable[[], WorkloadCertificate]) -> None:
        self._certificate = certificate
        self._cached: tuple[WorkloadCertificate, ssl.SSLContext] | None = None

    def current(self) -> ssl.SSLContext:
        cert = self._certificate()
        if self._cached is None or self._cached[0] is not cert:
            ctx = server_context(cert, require_client_cert=False)
            ctx.set_alpn_protocols(["http/1.1"])
            self._cached = (cert, ctx)
        return self._cached[1]


async def serve_tap(
    hub: TapHub,
    authenticator: TapAuthenticator,
    *,
    certificate: Callable[[], WorkloadCertificate],
    host: str,
    port: int,
    snapshot: Snapshot = lambda: None,
    source_read: Callable[[], str] = lambda: "",
    pages: Mapping[str, Page] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the tap API (and ``/v1/snapshot``: ``snapshot()``'s JSON, None before the
    first publish, with ``source_read()``; and ``pages`` by path) until cancelled;
    ``started((host, port))`` once it listens."""
    sock = await open_listener(host, port, backlog=64)
    bound = sock.getsockname()
    contexts = _Contexts(certificate)
    async with trio.open_nursery() as handlers:
        published = partial(_published, snapshot, source_read)
        handle = partial(_handle, hub, authenticator, contexts, published, pages or {})
        await handlers.start(
            partial(serve_listeners, handle, [sock], handler_nursery=handlers, name="tap")
        )
        log.info("tap_listening", host=bound[0], port=bound[1])
        task_status.started((bound[0], bound[1]))


def _published(
    snapshot: Snapshot, source_read: Callable[[], str]
) -> tuple[dict[str, Any], str] | None:
    """The snapshot and what it reflects, read together (in one scheduler step)."""
    found = snapshot()
    return None if found is None else (found, source_read())


async def _handle(
    hub: TapHub,
    authenticator: TapAuthenticator,
    contexts: _Contexts,
    snapshot: Callable[[], tuple[dict[str, Any], str] | None],
    pages: Mapping[str, Page],
    plain: trio.SocketStream,
) -> None:
    peer = plain.socket.getpeername()
    src = f"{peer[0]}:{peer[1]}"
    stream = trio.SSLStream(plain, contexts.current(), server_side=True, https_compatible=True)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    async with stream:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                await stream.do_handshake()
                request = await _read_request(stream, conn)
            tap_filter, token, page = _parse(request, pages)
            decision = await authenticator.authorize(token, tap_filter)
            if isinstance(decision, TapRefusal):
                headers = (("www-authenticate", "Bearer"),) if decision.status == 401 else ()
                raise _Reply(decision.status, decision.reason, headers)
            if page is not None:
                await _send_page(stream, conn, await page[0](page[1]))
                return
            if tap_filter is None:
                await _send_snapshot(stream, conn, snapshot())
                log.info("snapshot_read", src=src, caller=decision)
                return
            with hub.open(tap_filter) as session:
                log.info("tap_client", src=src, caller=decision, tap=session.id)
                await _stream(stream, conn, hub, session)
        except _Reply as reply:
            log.warning("tap_refused", src=src, status=reply.status, reason=str(reply))
            await _send_error(stream, conn, reply)
        except TooManyTaps as exc:
            await _send_error(stream, conn, _Reply(503, str(exc)))
        except (trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError) as exc:
            log.info("tap_client_gone", src=src, reason=str(exc) or type(exc).__name__)


async def _read_request(stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_HEAD)
            conn.receive_data(bytes(data))
            if not data:
                raise trio.BrokenResourceError("client closed before its request")
            continue
        if isinstance(event, h11.Request):
            return event
        raise h11.RemoteProtocolError(f"expected a request, got {event!r}")


def _parse(
    request: Any, pages: Mapping[str, Page]
) -> tuple[TapFilter | None, str | None, tuple[Page, dict[str, str]] | None]:
    """The tap asked for (None: the snapshot or a page), the bearer token, and the page
    with its query."""
    if request.method != b"GET":
        raise _Reply(405, "only GET", (("allow", "GET"),))
    url = urlsplit(request.target.decode("latin-1"))
    if url.path not in (TAP_PATH, SNAPSHOT_PATH, *pages):
        raise _Reply(404, f"not found: the tap is {TAP_PATH}, the snapshot {SNAPSHOT_PATH}")
    page = (pages[url.path], dict(parse_qsl(url.query))) if url.path in pages else None
    tap_filter = None
    if url.path == TAP_PATH:
        query = dict(parse_qsl(url.query))
        try:
            tap_filter = TapFilter.build(
                query.get("target", ""), to=query.get("to"), method=query.get("method"),
                path=query.get("path"), status=query.get("status"),
            )  # fmt: skip
        except TapFilterError as exc:
            raise _Reply(400, str(exc)) from None
    token = None
    for name, value in request.headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            token = value[7:].decode("latin-1").strip() or None
    return tap_filter, token, page


async def _send_error(
    stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection, reply: _Reply
) -> None:
    if conn.our_state is not h11.SEND_RESPONSE:
        return
    body = (json.dumps({"error": str(reply), "status": reply.status}) + "\n").encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body))),
               ("connection", "close"), *reply.headers]  # fmt: skip
    with trio.move_on_after(REQUEST_TIMEOUT):
        try:
            await stream.send_all(
                conn.send(h11.Response(status_code=reply.status, headers=headers))
            )
            await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        except trio.BrokenResourceError:
            pass


async def _send_snapshot(
    stream: trio.SSLStream[trio.SocketStream],
    conn: h11.Connection,
    found: tuple[dict[str, Any], str] | None,
) -> None:
    """The snapshot as one JSON line (what the tap client reads) and what it reflects,
    or 503 before any."""
    if found is None:
        raise _Reply(503, "no snapshot published yet: the control plane is still listing")
    body = _line(found[0])
    head = h11.Response(status_code=200, headers=[
        ("content-type", "application/x-ndjson"), ("content-length", str(len(body))),
        ("cache-control", "no-store"), ("connection", "close"), (SOURCE_READ_HEADER, found[1]),
    ])  # fmt: skip
    await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _send_page(
    stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection, page: Response
) -> None:
    head = h11.Response(status_code=page.status, headers=[
        ("content-type", page.content_type), ("content-length", str(len(page.body))),
        ("cache-control", "no-store"), ("connection", "close"), *page.headers,
    ])  # fmt: skip
    await stream.send_all(conn.send(head) + conn.send(h11.Data(data=page.body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _stream(
    stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection, hub: TapHub, session: Any
) -> None:
    """Send the session's events as JSON lines until the client goes away."""
    head = h11.Response(status_code=200, headers=[("content-type", "application/x-ndjson"),
                                                  ("cache-control", "no-store")])  # fmt: skip
    started = {"type": "started", "id": session.id, "filter": session.filter.to_json(),
               "proxies": hub.proxies()}  # fmt: skip
    await stream.send_all(conn.send(head) + conn.send(h11.Data(data=_line(started))))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_closed, stream, nursery.cancel_scope)
        while True:
            lines = bytearray()
            with trio.move_on_after(DROPPED_EVERY):
                batch = await session.batches.receive()
                session.dropped += batch.dropped
                for event in batch.events:
                    lines += _line({"type": "event", "proxy": batch.proxy, **event})
            if dropped := session.take_dropped():
                lines += _line({"type": "dropped", "count": dropped})
            if lines:
                await stream.send_all(conn.send(h11.Data(data=bytes(lines))))


async def _until_closed(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """The client sends nothing after its request: its end (or an error) ends the tap."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    scope.cancel()


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()
