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
from typing import TYPE_CHECKING, Final

import structlog
import trio
from h2.errors import ErrorCodes

from mesh.concurrency import only_cancelled
from mesh.hbone import H2Stream, Http2Connection
from mesh.hbone.settings import HboneError, HboneRetryableError
from mesh.hbone.transport import StreamTransport
from mesh.model_l7 import GrpcRetry
from mesh.response_flags import ResponseFlag
from waypoint.backends import NO_ANSWER, Backend, Overflow
from waypoint.body_copy import BodyCopy
from waypoint.bridge import BridgeFailed, cut, h2_over_h1
from waypoint.dispatch import Plan
from waypoint.extensions import DelayedReply
from waypoint.h2_request import (
    HOP_BY_HOP,
    H2Request,
    PrefixedStream,
    grpc_status_of,
    normalized,
    request_of,
)
from waypoint.http1 import READ_SIZE, Http1Error
from waypoint.mirror import start_mirrors
from waypoint.replies import (
    Failed,
    cut_by_shutdown,
    no_healthy_upstream,
    overflow,
    route_timeout,
    stream_idle_timeout,
    upstream_failure,
)
from waypoint.replies import LocalReply as Reply
from waypoint.retries import Retries, again_for
from waypoint.session import IdleTimer, Session, Shared
from waypoint.telemetry import Finished, new_request_id
from waypoint.upstream import H2_SETTINGS, Target, UpstreamError

if TYPE_CHECKING:
    from mesh.model import MeshSnapshot
    from waypoint.destination import Caller, Destination

log = structlog.get_logger("waypoint.access")

ATTEMPTS: Final = 2


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
        req = H2Request(headers, time.monotonic(), request_id, grpc)
        try:
            if self.proxy.dispatcher.gate.unsettled(self.snapshot):  # jwksUri keys, first time
                await self.proxy.dispatcher.gate.settle(self.snapshot)
            req.headers = headers = normalized(headers, grpc=grpc)
            plan = self.proxy.dispatcher.plan(
                self.snapshot,
                self.destination,
                self.caller,
                request_of(headers),
                grpc=grpc,
                request_id=request_id,
            )
            if not isinstance(plan, Plan):
                raise Failed(plan)
            req.plan = plan
            if plan.delay:  # a FaultInjection's delay: the route's timeout starts after it
                req.flags = plan.flag
                await trio.sleep(plan.delay)
            if plan.mirrors:
                req.body_copy = BodyCopy()
                req.body_read = not down.accepts_data() and not down.buffered
            try:
                ended = await self._forward_within(down, req, plan)
            finally:
                if plan.mirrors and req.body_read:
                    start_mirrors(self.proxy, self.snapshot, plan.mirrors, plan.request,
                                  req.body_copy, self.ours(req.request_id))  # fmt: skip
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
        except BaseException as exc:
            if not only_cancelled(exc):
                raise
            # cut from outside: the drain ran out, or the connection failed (a reset of this
            # stream cancels it too: the client is gone, nobody to answer, ``DC`` below)
            if down.broken:
                raise
            if not down.headers_sent and down.may_send():
                reply = cut_by_shutdown(grpc=grpc)
                req.status, req.flags = reply.code, reply.flag.value
                if reply.grpc_status is not None:
                    req.grpc_status = str(int(reply.grpc_status))
                head = reply.h2_headers() if reply.trailers_only else [  # no await: no body
                    (":status", str(reply.code)), ("content-length", "0")]  # fmt: skip
                down.send_headers([*head, ("x-request-id", req.request_id)], end_stream=True)
            elif req.flags == "-":
                req.flags = ResponseFlag.LOCAL_RESET.value  # the answer had begun: cut
            raise
        finally:
            if req.flags == "-" and down.broken:  # the client reset it (or its connection broke)
                req.flags = "DC"
            self._account(req)

    async def _forward_within(self, down: H2Stream, req: H2Request, plan: Plan) -> str:
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

    async def _forward(self, down: H2Stream, req: H2Request, plan: Plan) -> None:
        if not plan.targets:
            raise Failed(no_healthy_upstream(grpc=req.grpc))
        backend = self.proxy.backends.of(self.snapshot, plan.service)
        if not backend.admit():
            raise Failed(overflow(grpc=req.grpc))
        req.has_body = down.accepts_data() or bool(down.buffered)
        retries = req.retries = Retries.of(plan, backend)
        if retries is not None and req.has_body and req.body_copy is None:
            req.body_copy = BodyCopy()  # to send it again
        attempts = ATTEMPTS + (retries.retry.attempts if retries is not None else 0)
        try:
            forward = self._forward_h1 if plan.speak == "http1" else self._forward_h2
            await forward(down, req, plan, backend, attempts)
        finally:
            backend.release()
            if retries is not None:
                retries.close()

    @staticmethod
    async def _next(req: H2Request, backend: Backend, targets: list[Target],
                    tried: list[Target]) -> Target:  # fmt: skip
        """The endpoint of the next attempt (after the retry's backoff, for a retry)."""
        if req.retries is not None and req.retries.done:  # sent again on its answer
            await trio.sleep(req.retries.backoff())
        target = backend.pick(targets, avoid=tried)
        if target is None:  # every endpoint ejected
            raise Failed(no_healthy_upstream(grpc=req.grpc))
        tried.append(target)
        return target

    async def _forward_h2(
        self, down: H2Stream, req: H2Request, plan: Plan, backend: Backend, attempts: int
    ) -> None:
        targets = plan.targets
        tried: list[Target] = []
        for attempt in range(attempts):
            target = await self._next(req, backend, targets, tried)
            req.target, req.status = target, 0
            try:
                conn = await self.proxy.h2.connection(target, self.connect_headers())
                headers = self._upstream_headers(req, plan)
                up = conn.start_request(headers, end_stream=not req.has_body)
            except (UpstreamError, HboneRetryableError):
                backend.connect_failed(target, len(targets))
                if attempt + 1 < attempts:
                    continue
                raise Failed(upstream_failure(grpc=req.grpc, connected=False)) from None
            started = backend.started(target)
            try:
                if await self._exchange(down, up, req, retry_ok=attempt + 1 < attempts):
                    return
            finally:
                backend.finished(target, req.status or NO_ANSWER, started, len(targets))
                cut(up, ErrorCodes.CANCEL)  # cancelled or failed half-way: the app hears it

    async def _forward_h1(
        self, down: H2Stream, req: H2Request, plan: Plan, backend: Backend, attempts: int
    ) -> None:
        """The app speaks HTTP/1.1 (its port says ``http``): the stream's request goes on a
        pooled HTTP/1.1 connection, the answer comes back on the stream."""
        tried: list[Target] = []
        extra = [(n.encode(), v.encode("latin-1")) for n, v in self.ours(req.request_id)]
        for attempt in range(attempts):
            target = await self._next(req, backend, plan.targets, tried)
            try:
                slot = await backend.connection_slot()
            except Overflow:
                raise Failed(overflow(grpc=req.grpc)) from None
            try:
                last = attempt + 1 == attempts
                if await self._attempt_h1(down, req, plan, backend, target, extra, last=last):
                    return
            finally:
                backend.connection_done(slot)

    async def _attempt_h1(
        self, down: H2Stream, req: H2Request, plan: Plan, backend: Backend, target: Target,
        extra: list[tuple[bytes, bytes]], *, last: bool,
    ) -> bool:  # fmt: skip
        """One try on an HTTP/1.1 connection; False: try another endpoint (the connection
        failed, or the answer has a retry code)."""
        try:
            conn = await self.proxy.upstreams.checkout(target, self.connect_headers())
        except UpstreamError:
            backend.connect_failed(target, len(plan.targets))
            if not last:
                return False
            raise Failed(upstream_failure(grpc=req.grpc, connected=False)) from None
        req.target, req.status = target, 0
        counted = [0, 0]
        reusable = False
        started = backend.started(target)
        try:
            status, reusable = await h2_over_h1(
                conn, plan.request, extra, down, counted, req.active, copy=req.body_copy,
                again=again_for(req, retry_ok=not last),
            )  # fmt: skip
            if status is None:
                return False  # a retry code: the request goes again
            req.status, req.body_read = status, True
            if req.retries is not None:
                req.flags = req.retries.flag(status) or req.flags
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

    def _upstream_headers(self, req: H2Request, plan: Plan) -> list[tuple[str, str]]:
        if plan.rewritten:  # routes or JWT outputs made the request anew
            r = plan.request
            scheme = next((v for k, v in req.headers if k == ":scheme"), "http")
            out = [(":method", r.method), (":scheme", scheme), (":path", r.path)]
            out += [(":authority", r.authority)] if r.authority else []
            out += [(k, v) for k, v in r.headers if k not in HOP_BY_HOP]
        else:
            out = [(k, v) for k, v in req.headers if k not in HOP_BY_HOP]
        out += self.ours(req.request_id)
        return out

    async def _exchange(
        self, down: H2Stream, up: H2Stream, req: H2Request, *, retry_ok: bool
    ) -> bool:
        """The request up and the answer down; False: the answer has a retry code and the
        request goes again (nothing of it was sent down)."""
        if up.may_send() and self._body_is_here(down, up, req):
            await self._pump_request(down, up, req)  # a unary call's: no second task either
        if not up.may_send():  # the request had no body, or it is sent: no second task
            try:
                response = await up.wait_response()
            except HboneError as exc:
                log.debug("upstream_reset", reason=str(exc))
                raise Failed(upstream_failure(grpc=req.grpc, connected=True)) from None
            if self._again(up, req, retry_ok, response):
                return False
            await self._respond(up, down, req, response)
            return True
        failed: Failed | None = None
        again = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_request, down, up, req)
            try:
                response = await up.wait_response()
            except HboneError as exc:  # raised outside the nursery: no exception group
                log.debug("upstream_reset", reason=str(exc))
                failed = Failed(upstream_failure(grpc=req.grpc, connected=True))
            else:
                again = self._again(up, req, retry_ok, response)
                if not again:
                    await self._respond(up, down, req, response)
            nursery.cancel_scope.cancel()  # the answer is complete (or unwanted): stop sending
        if failed is not None:
            raise failed
        return not again

    @staticmethod
    def _body_is_here(down: H2Stream, up: H2Stream, req: H2Request) -> bool:
        """Whether the client's whole body has arrived and the upstream stream's window
        takes it now: sending it cannot wait on the app, so this task sends it before
        it waits for the answer (a unary gRPC call's message, a small POST)."""
        return (
            not req.body_read
            and not down.accepts_data()
            and down.buffered <= up.connection.send_capacity(up)
        )

    @staticmethod
    def _again(
        up: H2Stream, req: H2Request, retry_ok: bool, response: list[tuple[str, str]]
    ) -> bool:
        """Whether the answer's status sends the request again (the rule's retry): its
        HTTP status, or for a GRPCRoute's retry the ``grpc-status`` of a trailers-only
        answer (one that came with its body, the status in trailers, is relayed as it is)."""
        retries = req.retries
        if retries is None:
            return False
        req.status = status = up.status or 0
        if isinstance(retries.retry, GrpcRetry):
            ended = not up.accepts_data() and not up.buffered and not up.trailers
            code = grpc_status_of(response, "") if ended else ""
            status = int(code) if code else -1
        if retries.again(status, retry_ok, replayable=req.replayable):
            return True
        req.flags = retries.flag(status) or req.flags
        return False

    async def _respond(
        self, up: H2Stream, down: H2Stream, req: H2Request, response: list[tuple[str, str]]
    ) -> None:
        req.status = up.status or 0
        req.grpc_status = grpc_status_of(response, "")
        answer = [(k, v) for k, v in response if k not in HOP_BY_HOP]
        if req.plan is not None and req.plan.changes_response:
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
                req.grpc_status = grpc_status_of(up.trailers, req.grpc_status)
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

    async def _pump_request(self, down: H2Stream, up: H2Stream, req: H2Request) -> None:
        try:
            if req.body_read and req.body_copy is not None:  # a retry: the body from its copy
                await up.send_all(bytes(req.body_copy.data))
                await (up.send_trailers(down.trailers) if down.trailers else up.send_eof())
                return
            while data := await down.receive_some(READ_SIZE):
                req.request_bytes += len(data)
                req.active()
                if req.body_copy is not None:
                    req.body_copy.add(data)
                if req.grpc:
                    req.sent_messages.feed(data)
                await up.send_all(data)
            req.body_read = True
            if req.body_copy is not None:
                req.body_copy.complete = True
            if down.trailers:
                await up.send_trailers(down.trailers)
            else:
                await up.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the response side tells what happened

    async def _reply(self, down: H2Stream, req: H2Request, reply: Reply) -> None:
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

    def _account(self, req: H2Request) -> None:
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
