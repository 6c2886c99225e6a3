"""One downstream HTTP/2 connection at the waypoint (h2c with prior knowledge inside the
tunnel, gRPC included): every stream is a request, routed on its own.

The connection runs on ambit's HTTP/2 engine (:class:`~mesh.hbone.Http2Connection`)
over the HBONE stream. Each request goes to an endpoint chosen per request (least
request) over a multiplexed h2c connection to it (:class:`H2Upstreams`: one or more per
endpoint, each an HBONE stream as the waypoint). Request and response bodies stream with
HTTP/2 flow control end to end; trailers (gRPC's status) are relayed. Retries as for
HTTP/1.1: once, on another endpoint, when the connection to the first could not be
opened or the stream was refused before any byte left. Local answers to gRPC callers are
trailers-only with the ``grpc-status`` gRPC's HTTP mapping gives.

``:path`` is read as an HTTP/1.1 target is (:func:`~waypoint.http_target.read_target`:
normalized, so routes, policy and the app see one path; 400 unless origin form, or ``*``
for OPTIONS; CONNECT is 501). A request the client resets, or breaks HTTP/2 on (a
``content-length`` that lies, bad trailers), is abandoned at once: its handler is
cancelled, so the app's stream is reset (CANCEL) or its HTTP/1.1 connection closed.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import structlog
import trio
from h2.errors import ErrorCodes

from mesh.hbone import H2Stream, Http2Connection
from mesh.hbone.settings import HboneError, HboneRetryableError
from mesh.hbone.transport import StreamTransport
from mesh.response_flags import ResponseFlag
from waypoint.backends import NO_ANSWER, Backend, Overflow
from waypoint.bridge import BridgeFailed, cut, h2_over_h1
from waypoint.dispatch import Plan
from waypoint.extensions import DelayedReply
from waypoint.http1 import READ_SIZE, Http1Error
from waypoint.http_request import HttpRequest
from waypoint.http_target import TargetError, read_target
from waypoint.mirror import MirrorBody, start_mirrors
from waypoint.replies import (
    Failed,
    local_reply,
    no_healthy_upstream,
    overflow,
    route_timeout,
    stream_idle_timeout,
    upstream_failure,
)
from waypoint.replies import LocalReply as Reply
from waypoint.session import IdleTimer, Session, Shared
from waypoint.telemetry import Finished, GrpcMessages, new_request_id
from waypoint.upstream import H2_SETTINGS, Target, UpstreamError

if TYPE_CHECKING:
    from mesh.model import MeshSnapshot
    from waypoint.destination import Caller, Destination

log = structlog.get_logger("waypoint.access")

ATTEMPTS: Final = 2
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
     "x-forwarded-client-cert", "x-request-id"}
)  # fmt: skip


class PrefixedStream(trio.abc.HalfCloseableStream):
    """``stream`` with ``prefix`` (bytes already read from it) put back in front."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = max_bytes or len(self._prefix)
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass
class _Request:
    headers: list[tuple[str, str]]
    started: float
    request_id: str
    grpc: bool
    status: int = 0
    grpc_status: str = ""
    flags: str = "-"
    target: Target | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    plan: Plan | None = None
    mirror_body: MirrorBody | None = None  # kept for the route's mirrors
    body_read: bool = False  # the request's whole body was read
    sent_messages: GrpcMessages = field(default_factory=GrpcMessages)
    received_messages: GrpcMessages = field(default_factory=GrpcMessages)
    idle: IdleTimer | None = None  # the stream idle timeout, while a body is to come

    def active(self) -> None:
        """A byte moved: the stream idle timeout starts again."""
        if self.idle is not None:
            self.idle.active()

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")


class H2Session(Session):
    def __init__(
        self,
        proxy: Shared,
        snapshot: MeshSnapshot,
        destination: Destination,
        caller: Caller,
        stream: trio.abc.HalfCloseableStream,
        *,
        initial: bytes = b"",
    ) -> None:
        super().__init__(proxy, snapshot, destination, caller)
        self.conn = Http2Connection(
            StreamTransport(PrefixedStream(stream, initial)), peer=caller.identity,
            settings=H2_SETTINGS, handler=self._on_stream, client_side=False,
            idle_timeout=300.0, cancel_on_reset=True,  # the app must hear a request abandoned
        )  # fmt: skip

    async def run(self) -> None:
        await self.conn.serve()

    async def _on_stream(self, down: H2Stream) -> None:
        self.snapshot = self.proxy.snapshot() or self.snapshot
        headers = down.request_headers
        request_id = next((v for k, v in headers if k == "x-request-id"), "") or new_request_id()
        content_type = next((v for k, v in headers if k == "content-type"), "")
        grpc = content_type.startswith("application/grpc")
        req = _Request(headers, time.monotonic(), request_id, grpc)
        try:
            req.headers = headers = _normalized(headers, grpc=grpc)
            plan = self.proxy.dispatcher.plan(
                self.snapshot, self.destination, self.caller, _request_of(headers), grpc=grpc
            )
            if not isinstance(plan, Plan):
                raise Failed(plan)
            req.plan = plan
            if plan.delay:  # a FaultInjection's delay: the route's timeout starts after it
                req.flags = plan.flag
                await trio.sleep(plan.delay)
            if plan.mirrors:
                req.mirror_body = MirrorBody()
                req.body_read = not down.accepts_data() and not down.buffered
            try:
                ended = await self._forward_within(down, req, plan)
            finally:
                if plan.mirrors and req.body_read:
                    start_mirrors(self.proxy, self.snapshot, plan.mirrors, plan.request,
                                  req.mirror_body)  # fmt: skip
            if ended:
                req.flags = ended
                if down.headers_sent:  # the answer had begun: it is cut
                    cut(down)
                    await down.aclose()
                elif ended == "UT":
                    raise Failed(route_timeout(grpc=grpc))
                else:
                    raise Failed(stream_idle_timeout(grpc=grpc))
        except Failed as failed:
            reply = failed.reply
            req.status, req.flags = reply.code, reply.flag.value
            if isinstance(reply, DelayedReply):  # a fault's delay, then its abort
                await trio.sleep(reply.delay)
            if reply.grpc_status is not None:
                req.grpc_status = str(int(reply.grpc_status))
            await self._reply(down, req, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            req.flags = req.flags if req.flags != "-" else "DC"
        finally:
            if req.flags == "-" and down.broken:  # the client reset it (or its connection broke)
                req.flags = "DC"
            self._account(req)

    async def _forward_within(self, down: H2Stream, req: _Request, plan: Plan) -> str:
        """:meth:`_forward` within the route's timeout and, while a request body is to
        come, the stream idle timeout; the flag of the one that ended it, or ""."""
        if down.accepts_data():
            req.idle = IdleTimer()
        if plan.timeout is None and req.idle is None:  # no cancel scope at all
            await self._forward(down, req, plan)
            return ""
        route = trio.CancelScope(
            deadline=trio.current_time() + plan.timeout if plan.timeout is not None else math.inf
        )
        with route, req.idle.scope if req.idle is not None else trio.CancelScope():
            await self._forward(down, req, plan)
        if req.idle is not None and req.idle.expired:
            return ResponseFlag.STREAM_IDLE_TIMEOUT.value
        return "UT" if route.cancelled_caught else ""

    async def _forward(self, down: H2Stream, req: _Request, plan: Plan) -> None:
        if not plan.targets:
            raise Failed(no_healthy_upstream(grpc=req.grpc))
        backend = self.proxy.backends.of(self.snapshot, plan.service)
        if not backend.admit():
            raise Failed(overflow(grpc=req.grpc))
        try:
            if plan.speak == "http1":
                await self._forward_h1(down, req, plan, backend)
            else:
                await self._forward_h2(down, req, plan, backend)
        finally:
            backend.release()

    async def _forward_h2(
        self, down: H2Stream, req: _Request, plan: Plan, backend: Backend
    ) -> None:
        targets = plan.targets
        tried: list[Target] = []
        for attempt in range(ATTEMPTS):
            target = backend.pick(targets, avoid=tried)
            if target is None:  # every endpoint ejected
                raise Failed(no_healthy_upstream(grpc=req.grpc))
            tried.append(target)
            req.target = target
            try:
                conn = await self.proxy.h2.connection(target, self.connect_headers())
                ended = not down.accepts_data() and not down.buffered  # a request without body
                up = conn.start_request(self._upstream_headers(req, plan), end_stream=ended)
            except (UpstreamError, HboneRetryableError):
                backend.connect_failed(target, len(targets))
                if attempt + 1 < ATTEMPTS:
                    continue
                raise Failed(upstream_failure(grpc=req.grpc, connected=False)) from None
            started = backend.started(target)
            try:
                await self._exchange(down, up, req)
                return
            finally:
                backend.finished(target, req.status or NO_ANSWER, started, len(targets))
                cut(up, ErrorCodes.CANCEL)  # cancelled or failed half-way: the app hears it

    async def _forward_h1(
        self, down: H2Stream, req: _Request, plan: Plan, backend: Backend
    ) -> None:
        """The app speaks HTTP/1.1 (its port says ``http``): the stream's request goes on a
        pooled HTTP/1.1 connection, the answer comes back on the stream."""
        tried: list[Target] = []
        extra = [(b"x-request-id", req.request_id.encode("latin-1")),
                 (b"x-forwarded-client-cert", self.xfcc().encode())]  # fmt: skip
        for attempt in range(ATTEMPTS):
            target = backend.pick(plan.targets, avoid=tried)
            if target is None:
                raise Failed(no_healthy_upstream(grpc=req.grpc))
            tried.append(target)
            last = attempt + 1 == ATTEMPTS
            try:
                slot = await backend.connection_slot()
            except Overflow:
                raise Failed(overflow(grpc=req.grpc)) from None
            try:
                if await self._attempt_h1(down, req, plan, backend, target, extra, last=last):
                    return
            finally:
                backend.connection_done(slot)

    async def _attempt_h1(
        self, down: H2Stream, req: _Request, plan: Plan, backend: Backend, target: Target,
        extra: list[tuple[bytes, bytes]], *, last: bool,
    ) -> bool:  # fmt: skip
        """One try on an HTTP/1.1 connection; False: try another endpoint."""
        try:
            conn = await self.proxy.upstreams.checkout(target, self.connect_headers())
        except UpstreamError:
            backend.connect_failed(target, len(plan.targets))
            if not last:
                return False
            raise Failed(upstream_failure(grpc=req.grpc, connected=False)) from None
        req.target = target
        counted = [0, 0]
        reusable = False
        started = backend.started(target)
        try:
            req.status, reusable = await h2_over_h1(
                conn, plan.request, extra, down, counted, req.active
            )
            req.body_read = True
            return True
        except BridgeFailed:
            if conn.requests == 0 and not last:
                return False
            raise Failed(upstream_failure(grpc=req.grpc, connected=True)) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, Http1Error):
            req.flags = "UPE"
            await down.aclose()
            return True
        finally:
            conn.requests += 1
            backend.finished(target, req.status or NO_ANSWER, started, len(plan.targets))
            req.request_bytes += counted[0]
            req.response_bytes += counted[1]
            reusable = reusable and backend.reusable(conn.requests)
            await self.proxy.upstreams.release(conn, reusable=reusable)

    def _upstream_headers(self, req: _Request, plan: Plan) -> list[tuple[str, str]]:
        if plan.rewritten:  # routes or JWT outputs made the request anew
            r = plan.request
            scheme = next((v for k, v in req.headers if k == ":scheme"), "http")
            out = [(":method", r.method), (":scheme", scheme), (":path", r.path)]
            out += [(":authority", r.authority)] if r.authority else []
            out += [(k, v) for k, v in r.headers if k not in HOP_BY_HOP]
        else:
            out = [(k, v) for k, v in req.headers if k not in HOP_BY_HOP]
        out.append(("x-request-id", req.request_id))
        out.append(("x-forwarded-client-cert", self.xfcc()))
        return out

    async def _exchange(self, down: H2Stream, up: H2Stream, req: _Request) -> None:
        if not up.may_send():  # the request had no body: no second task
            try:
                response = await up.wait_response()
            except HboneError as exc:
                log.debug("upstream_reset", reason=str(exc))
                raise Failed(upstream_failure(grpc=req.grpc, connected=True)) from None
            await self._respond(up, down, req, response)
            return
        failed: Failed | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_request, down, up, req)
            try:
                response = await up.wait_response()
            except HboneError as exc:  # raised outside the nursery: no exception group
                log.debug("upstream_reset", reason=str(exc))
                failed = Failed(upstream_failure(grpc=req.grpc, connected=True))
                nursery.cancel_scope.cancel()
            else:
                await self._respond(up, down, req, response)
                nursery.cancel_scope.cancel()  # the answer is complete: stop sending
        if failed is not None:
            raise failed

    async def _respond(
        self, up: H2Stream, down: H2Stream, req: _Request, response: list[tuple[str, str]]
    ) -> None:
        req.status = up.status or 0
        req.grpc_status = _grpc_status(response, "")
        answer = [(k, v) for k, v in response if k not in HOP_BY_HOP]
        if req.plan is not None and req.plan.forward is not None:
            status = [(k, v) for k, v in answer if k.startswith(":")]
            rest = tuple((k, v) for k, v in answer if not k.startswith(":"))
            answer = status + list(req.plan.response_headers(rest))
        ended = not up.accepts_data() and not up.buffered
        try:
            down.send_headers(answer, end_stream=ended and not up.trailers)
            if ended and not up.trailers:
                return
            while data := await up.receive_some():
                req.response_bytes += len(data)
                req.active()
                if req.grpc:
                    req.received_messages.feed(data)
                await down.send_all(data)
            if up.trailers:
                req.grpc_status = _grpc_status(up.trailers, req.grpc_status)
                await down.send_trailers(up.trailers)
            else:
                await down.send_eof()
        except trio.BrokenResourceError:
            # One side broke mid-response: the other must see the stream end badly too.
            req.flags = "UPE" if down.may_send() else "DC"
            cut(down)  # a reset, not END_STREAM: the client must not take the answer as whole
            await down.aclose()
            await up.aclose()
        except trio.ClosedResourceError:
            req.flags = "DC"
            await up.aclose()

    async def _pump_request(self, down: H2Stream, up: H2Stream, req: _Request) -> None:
        try:
            while data := await down.receive_some(READ_SIZE):
                req.request_bytes += len(data)
                req.active()
                if req.mirror_body is not None:
                    req.mirror_body.add(data)
                if req.grpc:
                    req.sent_messages.feed(data)
                await up.send_all(data)
            req.body_read = True
            if down.trailers:
                await up.send_trailers(down.trailers)
            else:
                await up.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the response side tells what happened

    async def _reply(self, down: H2Stream, req: _Request, reply: Reply) -> None:
        if down.headers_sent or not down.may_send():
            return
        headers = [*reply.h2_headers(), ("x-request-id", req.request_id)]
        if reply.trailers_only or not reply.body:
            down.send_headers(headers, end_stream=True)
            return
        down.send_headers(headers)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await down.send_all(reply.body)
            await down.send_eof()

    def _account(self, req: _Request) -> None:
        done = Finished(
            method=req.header(":method"),
            authority=req.header(":authority"),
            path=req.header(":path"),
            protocol="HTTP/2",
            request_id=req.request_id,
            traceparent=req.header("traceparent"),
            started=req.started,
            status=req.status,
            grpc=req.grpc,
            grpc_status=req.grpc_status,
            flags=req.flags,
            request_bytes=req.request_bytes,
            response_bytes=req.response_bytes,
            request_messages=req.sent_messages.count,
            response_messages=req.received_messages.count,
        )
        self.account(done, req.target, req.plan)


def _grpc_status(headers: list[tuple[str, str]], default: str) -> str:
    """``grpc-status`` as metrics and the access log read it: a code of one or two digits,
    anything else UNKNOWN (2), as a gRPC client reads it; an app cannot mint label values."""
    value = next((v for k, v in headers if k == "grpc-status"), None)
    if value is None:
        return default
    return value if value.isascii() and value.isdigit() and len(value) <= 2 else "2"


def _normalized(headers: list[tuple[str, str]], *, grpc: bool) -> list[tuple[str, str]]:
    """``headers`` with ``:path`` normalized as an HTTP/1.1 target is; :class:`Failed` for
    CONNECT (501) or a path that is not origin form (or ``*`` for OPTIONS; 400)."""
    method = next((v for k, v in headers if k == ":method"), "")
    path = next((v for k, v in headers if k == ":path"), "")
    if method == "CONNECT":
        raise Failed(local_reply(501, "CONNECT is not proxied by the waypoint", grpc=grpc))
    try:
        if not path.isascii() or not (path.startswith("/") or path == "*"):
            raise TargetError("the :path is neither an ASCII path nor *")
        normal = read_target(method.encode(), path.encode())[0].decode()
    except TargetError as exc:
        raise Failed(local_reply(400, str(exc), grpc=grpc,
                                 flag=ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR,
                                 details="downstream_protocol_error")) from None  # fmt: skip
    if normal == path:
        return headers
    return [(k, normal if k == ":path" else v) for k, v in headers]


def _request_of(headers: list[tuple[str, str]]) -> HttpRequest:
    """The request as routes and policies read it: pseudo-headers become its parts."""
    fields = {k: v for k, v in headers if k.startswith(":")}
    rest = tuple((k, v) for k, v in headers if not k.startswith(":") and k not in HOP_BY_HOP)
    method, path = fields.get(":method", ""), fields.get(":path", "")
    return HttpRequest(
        method, path, fields.get(":authority", ""), rest, fields.get(":scheme", "http")
    )
