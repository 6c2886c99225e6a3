"""One downstream HTTP/1.x connection at the waypoint: request after request.

For each request: pick an endpoint (the backend's balancer, :mod:`waypoint.backends`),
send the request over an HTTP/1.1 connection through HBONE (the waypoint's identity),
stream the body up and the response back with backpressure, then count and log it.
Keep-alive on both sides; interim answers (``100-continue``) are relayed; an Upgrade
(WebSocket) answered 101 turns the connection into a byte relay.

Retries, as Istio's default: a request whose connection could not be opened, or whose
reused connection the app closed before answering, is tried once more on another
endpoint, before any byte of its body was sent; on status: :mod:`waypoint.retries`.

Local answers use Envoy's response flags (:mod:`waypoint.replies`): ``UH``, ``UF``,
``UC``, ``UO``, ``DC``... A malformed request gets 400 (or 413/414/431) and the
connection closes; nothing else is disturbed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

import structlog
import trio

from mesh.concurrency import only_cancelled
from mesh.response_flags import ResponseFlag
from waypoint.backends import NO_ANSWER, Backend, Overflow
from waypoint.body_copy import BodyCopy
from waypoint.bridge import BridgeFailed, h1_over_h2
from waypoint.dispatch import Plan
from waypoint.extensions import DelayedReply
from waypoint.http1 import (
    LAST_CHUNK,
    Head,
    Http1Error,
    MessageCut,
    MessageReader,
    encode_chunk,
    encode_response_head,
    latin1,
    request_of,
)
from waypoint.http_exchange import (
    ClientGone,
    Exchange,
    answer_cut,
    backoff,
    next_target,
    refuse,
    relay_upgrade,
    request_head,
)
from waypoint.mirror import start_mirrors
from waypoint.replies import (
    Failed,
    bad_upstream_answer,
    malformed_request,
    no_healthy_upstream,
    overflow,
    route_timeout,
    stream_idle_timeout,
    upstream_failure_http1,
)
from waypoint.replies import LocalReply as Reply
from waypoint.retries import Retries, again_for
from waypoint.session import IdleTimer, Session, Shared
from waypoint.telemetry import Finished, new_request_id
from waypoint.upstream import Connection, Target, UpstreamError

if TYPE_CHECKING:
    from mesh.model import MeshSnapshot
    from waypoint.destination import Caller, Destination

log = structlog.get_logger("waypoint.access")

ATTEMPTS: Final = 2  # Istio's default: one retry on connect failure or refused stream


class HttpSession(Session):
    def __init__(
        self, proxy: Shared, snapshot: MeshSnapshot, destination: Destination, caller: Caller,
        stream: trio.abc.HalfCloseableStream, *, initial: bytes = b"",
    ) -> None:  # fmt: skip
        super().__init__(proxy, snapshot, destination, caller)
        self.stream = stream
        self.reader = MessageReader(stream, initial=initial,
                                    default_host=latin1(destination.authority))  # fmt: skip
        self.keep_alive = True

    async def run(self) -> None:
        """Serve requests until the client closes, asks to close, breaks the protocol, or
        sends no request for the idle timeout (:mod:`waypoint.idle`)."""
        idle = self.proxy.idle
        with trio.CancelScope() as scope:
            try:
                while self.keep_alive:
                    idle.waiting(scope)
                    try:
                        head = await self.reader.read_head()
                    except Http1Error as exc:
                        idle.serving(scope)
                        await self._refuse(exc)
                        return
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    if head is None:
                        return
                    idle.serving(scope)
                    try:
                        await self._exchange(head)
                    except ClientGone:
                        return
            finally:
                idle.serving(scope)

    async def _refuse(self, exc: Http1Error) -> None:
        """A head that cannot be read: its status, one warning, counted and logged (DPE)."""
        log.warning("http_request_malformed", src_identity=str(self.caller.identity),
                    status=exc.status, reason=exc.reason)  # fmt: skip
        self.account(await refuse(self.stream, exc, self.destination.authority), None, None)

    async def _exchange(self, head: Head) -> None:
        request_id = head.header(b"x-request-id") or new_request_id().encode()
        exchange = Exchange(head, time.monotonic(), request_id)
        self.snapshot = self.proxy.snapshot() or self.snapshot  # config applies per request
        self.keep_alive = head.keep_alive
        try:
            if self.proxy.dispatcher.gate.unsettled(self.snapshot):  # jwksUri keys, first time
                await self.proxy.dispatcher.gate.settle(self.snapshot)
            plan = self.proxy.dispatcher.plan(
                self.snapshot,
                self.destination,
                self.caller,
                request_of(head),
                grpc=False,
                request_id=request_id.decode("latin-1"),
            )
            if not isinstance(plan, Plan):
                raise Failed(plan)
            exchange.plan = plan
            if plan.delay:  # a FaultInjection's delay: the route's timeout starts after it
                exchange.flags = plan.flag
                await trio.sleep(plan.delay)
            if head.has_body and (plan.mirrors or plan.retry is not None):
                exchange.body_copy = BodyCopy()  # for the mirrors, and to send it again
            try:
                await self._forward(exchange, plan)
            finally:
                if plan.mirrors and (exchange.body_read or not head.has_body):
                    ours = self.ours(request_id.decode("latin-1"))
                    start_mirrors(self.proxy, self.snapshot, plan.mirrors, plan.request,
                                  exchange.body_copy, ours)  # fmt: skip
        except Failed as failed:
            exchange.status, exchange.flags = failed.reply.code, failed.reply.flag.value
            if isinstance(failed.reply, DelayedReply):  # a fault's delay, then its abort
                await trio.sleep(failed.reply.delay)
            await self._reply(exchange, failed.reply)
        except ClientGone:
            exchange.flags = "DC"
            self._account(exchange)
            raise
        except BaseException as exc:
            if only_cancelled(exc):  # cut from outside: the drain ran out, or the connection
                await answer_cut(self.stream, exchange)
                self._account(exchange)
            raise
        self._account(exchange)

    async def _forward(self, ex: Exchange, plan: Plan) -> None:
        """Carry ``plan`` out in the route's timeout (504 ``UT`` before an answer, cut after)."""
        if plan.timeout is None:  # no route timeout: no cancel scope either
            await self._attempts(ex, plan)
            return
        with trio.move_on_after(plan.timeout) as deadline:
            await self._attempts(ex, plan)
        if deadline.cancelled_caught:
            ex.flags = "UT"
            if ex.status == 0:
                raise Failed(route_timeout(grpc=False))
            self.keep_alive = False
            raise ClientGone

    async def _attempts(self, ex: Exchange, plan: Plan) -> None:
        """Send the request to the backend, under its circuit breaker and retries."""
        if not plan.targets:
            raise Failed(no_healthy_upstream(grpc=False))
        backend = ex.backend = self.proxy.backends.of(self.snapshot, plan.service)
        if not backend.admit():
            raise Failed(overflow(grpc=False))
        if plan.retry is not None:
            ex.retries = Retries.of(plan, backend)
        try:
            if plan.speak == "h2" and not ex.head.upgrade:
                await self._attempts_h2(ex, plan, backend)
            else:
                await self._attempts_h1(ex, plan, backend)
        finally:
            backend.release()
            if ex.retries is not None:
                ex.retries.close()

    async def _attempts_h1(self, ex: Exchange, plan: Plan, backend: Backend) -> None:
        targets = plan.targets
        tried: list[Target] = []
        attempts = ATTEMPTS + (ex.retries.retry.attempts if ex.retries else 0)
        for attempt in range(attempts):
            if ex.retries is not None:
                await backoff(ex)
            target = next_target(ex, backend, targets, tried)
            try:
                slot = False if backend.connections_unlimited else await backend.connection_slot()
            except Overflow:
                raise Failed(overflow(grpc=False)) from None
            try:
                try:
                    upstreams = self.proxy.upstreams
                    conn = upstreams.take_idle(target) or await upstreams.checkout(
                        target, self.connect_headers()
                    )
                except UpstreamError:
                    backend.connect_failed(target, len(targets))
                    if attempt + 1 < attempts:
                        continue
                    raise upstream_failure_http1(connected=False) from None
                ex.target, ex.status = target, 0
                started = backend.started(target)
                try:
                    if await self._over(conn, ex, retry_ok=attempt + 1 < attempts):
                        return
                finally:
                    backend.finished(target, ex.status or NO_ANSWER, started, len(targets))
            finally:
                backend.connection_done(slot)
        raise upstream_failure_http1(connected=True)

    async def _attempts_h2(self, ex: Exchange, plan: Plan, backend: Backend) -> None:
        """The app speaks h2c (its port says ``http2`` or ``grpc``): the request goes as
        HTTP/2, the answer comes back as HTTP/1.1."""
        tried: list[Target] = []
        extra = list(self.ours(ex.request_id.decode("latin-1")))
        attempts = ATTEMPTS + (ex.retries.retry.attempts if ex.retries else 0)
        for attempt in range(attempts):
            if ex.retries is not None:
                await backoff(ex)
            target = next_target(ex, backend, plan.targets, tried)
            last = attempt + 1 == attempts
            try:
                conn = await self.proxy.h2.connection(target, self.connect_headers())
            except UpstreamError:
                backend.connect_failed(target, len(plan.targets))
                if not last:
                    continue
                raise upstream_failure_http1(connected=False) from None
            ex.target, ex.status = target, 0
            counted = [0, 0]
            started = backend.started(target)
            try:
                status = await h1_over_h2(
                    conn, plan.request, extra, self.reader, ex.head.has_body, self._send_down,
                    version=ex.head.version, counted=counted, copy=ex.body_copy,
                    again=again_for(ex, retry_ok=not last),
                )  # fmt: skip
                if status is None:
                    continue  # a retry code: the request goes again
                ex.status, ex.body_read = status, True
                if ex.retries is not None:
                    ex.flags = ex.retries.flag(status) or ex.flags
                return
            except BridgeFailed as exc:
                if not exc.connected and not last:
                    continue
                raise upstream_failure_http1(connected=exc.connected) from None
            finally:
                backend.finished(target, ex.status or NO_ANSWER, started, len(plan.targets))
                ex.request_bytes += counted[0]
                ex.response_bytes += counted[1]

    async def _over(self, conn: Connection, ex: Exchange, *, retry_ok: bool) -> bool:
        """Send ``ex``'s request on ``conn`` and relay its response; False when ``conn``
        closed before any answer and the request may be tried again. ``conn`` is released
        (kept for reuse or closed) whatever happens."""
        reused = conn.requests > 0
        conn.requests += 1
        try:
            await conn.stream.send_all(request_head(ex, self.xfcc()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await conn.aclose()
            if reused and retry_ok:
                return False
            raise upstream_failure_http1(connected=True) from None
        if not ex.head.has_body:  # nothing to send beside the answer: no task, no nursery
            try:
                result = await self._respond(conn, ex, reused=reused, retry_ok=retry_ok)
            except BaseException:
                await conn.aclose()
                raise
            if result is None:
                await conn.aclose()
                return False
            await self._release(conn, ex, result)
            return True
        body_sent = trio.Event()
        ex.idle = IdleTimer()
        try:
            with ex.idle.scope:
                failed, result = await self._body_and_answer(conn, ex, body_sent, reused, retry_ok)
        except BaseException:
            await conn.aclose()
            raise
        if ex.idle.expired:  # no byte either way for the stream idle timeout
            await conn.aclose()
            ex.flags, self.keep_alive = ResponseFlag.STREAM_IDLE_TIMEOUT.value, False
            if ex.status:  # the answer had begun: it is cut
                raise ClientGone
            raise Failed(stream_idle_timeout(grpc=False))
        if failed is not None or result is None:
            await conn.aclose()
            if isinstance(ex.body_error, Http1Error) and not isinstance(ex.body_error, MessageCut):
                raise Failed(malformed_request(ex.body_error.reason))
            if ex.body_error is not None:
                raise ClientGone
            if failed is not None:
                raise failed
            return False
        if not body_sent.is_set():
            self.keep_alive = False
            result = False
        await self._release(conn, ex, result)
        return True

    async def _release(self, conn: Connection, ex: Exchange, reusable: bool) -> None:
        """Keep ``conn`` for the next request if it may carry one (``maxRequestsPerConnection``)."""
        reusable = reusable and (ex.backend is None or ex.backend.reusable(conn.requests))
        if not self.proxy.upstreams.keep(conn, reusable=reusable):
            await conn.aclose()

    async def _body_and_answer(
        self, conn: Connection, ex: Exchange, body_sent: trio.Event, reused: bool, retry_ok: bool
    ) -> tuple[Failed | ClientGone | None, bool | None]:
        """The body up and the answer down at once: how the answer ended, and whether."""
        failed: Failed | ClientGone | None = None
        result = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_body, conn, ex, body_sent)
            try:
                result = await self._respond(conn, ex, reused=reused, retry_ok=retry_ok)
            except (Failed, ClientGone) as exc:  # raised outside: no exception group
                failed = exc
            if failed is not None or result is None or not body_sent.is_set():
                nursery.cancel_scope.cancel()  # the answer came before the body was sent
        return failed, result

    async def _respond(
        self, conn: Connection, ex: Exchange, *, reused: bool, retry_ok: bool
    ) -> bool | None:
        """Read the response and relay it down: whether ``conn`` may carry another request;
        None: the request goes again (the app closed before answering, or a retry code)."""
        head = ex.head
        try:
            response = await conn.reader.read_head()
            while response is not None and 100 <= response.status < 200:
                if response.status == 101:
                    if head.upgrade:
                        break
                    raise Http1Error(502, "101 Switching Protocols to a request without Upgrade")
                await self._send_down(encode_response_head(response.status, response.headers))
                response = await conn.reader.read_head()
        except (Http1Error, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise bad_upstream_answer(exc) from None
        if response is None:
            if reused and retry_ok and not head.has_body:
                return None  # the app closed the idle connection: it never saw this request
            raise upstream_failure_http1(connected=True)
        ex.status = response.status
        if response.status == 101:
            self.keep_alive = False
            await relay_upgrade(self.stream, self.reader.upgraded, conn, ex, response)
            return False
        if ex.retries is not None:
            if ex.retries.again(response.status, retry_ok, replayable=ex.replayable):
                return None  # the caller closes the connection (its body is not wanted)
            ex.flags = ex.retries.flag(response.status) or ex.flags
        return await self._relay_response(conn, ex, response)

    async def _send_body(self, conn: Connection, ex: Exchange, done: trio.Event) -> None:
        chunked = ex.head.chunked
        if ex.body_read and ex.body_copy is not None:  # a retry: the body from its copy
            data = bytes(ex.body_copy.data)
            await conn.stream.send_all(
                ((encode_chunk(data) if data else b"") + LAST_CHUNK) if chunked else data
            )
            done.set()
            return
        try:
            while data := await self.reader.read_body():
                ex.request_bytes += len(data)
                if ex.idle is not None:
                    ex.idle.active()
                if ex.body_copy is not None:
                    ex.body_copy.add(data)
                await conn.stream.send_all(encode_chunk(data) if chunked else data)
            ex.body_read = True
            if ex.body_copy is not None:
                ex.body_copy.complete = True
            if chunked:
                await conn.stream.send_all(LAST_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError, Http1Error) as exc:
            self.keep_alive = False  # the client's body broke off: this connection is done
            ex.body_error = exc
            await conn.aclose()  # the app sees the request cut, and answers nobody
            return
        done.set()

    async def _relay_response(self, conn: Connection, ex: Exchange, response: Head) -> bool:
        """Send ``response`` down; whether ``conn`` can carry another request."""
        bodyless = ex.head.method == b"HEAD" or response.status in (204, 304)
        headers = response.end_to_end()
        if ex.plan is not None and ex.plan.changes_response:  # the route's header filters
            text = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers)
            headers = [(latin1(n), latin1(v)) for n, v in ex.plan.response_headers(text)]
        down_chunked = False
        if bodyless:
            length = response.header(b"content-length")
            if length is not None:
                headers.append((b"content-length", length))
        elif response.content_length is not None:
            headers.append((b"content-length", b"%d" % response.content_length))
        elif ex.head.version == "1.1":
            down_chunked = True
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            self.keep_alive = False  # an HTTP/1.0 client: the body ends with the connection
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        elif ex.head.version == "1.0":
            headers.append((b"connection", b"keep-alive"))
        encoded = encode_response_head(response.status, headers, ex.head.version)
        ex.response_bytes += len(encoded)
        if bodyless:
            await self._send_down(encoded)
            return response.status != 304 and ex.head.method != b"HEAD" and response.keep_alive
        ready, ended = conn.reader.take_body_nowait()  # what came with the head goes with it
        ex.response_bytes += len(ready)
        if ready:
            encoded += encode_chunk(ready) if down_chunked else ready
        if ended:
            await self._send_down(encoded + LAST_CHUNK if down_chunked else encoded)
            return response.keep_alive
        await self._send_down(encoded)
        try:
            while data := await conn.reader.read_body():
                ex.response_bytes += len(data)
                if ex.idle is not None:
                    ex.idle.active()
                await self._send_down(encode_chunk(data) if down_chunked else data)
        except (Http1Error, trio.BrokenResourceError, trio.ClosedResourceError):
            ex.flags = "UPE"
            self.keep_alive = False
            raise ClientGone from None  # the response is cut: the client must see it end
        if down_chunked:
            await self._send_down(LAST_CHUNK)
        return response.keep_alive

    async def _reply(self, ex: Exchange, reply: Reply) -> None:
        if ex.head.has_body and not await self.reader.drain_body(ex.count_request):
            self.keep_alive = False  # its body was not read: the connection cannot go on
        headers = [(latin1(n), latin1(v)) for n, v in reply.headers]
        headers.append((b"x-request-id", ex.request_id))
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        encoded = encode_response_head(reply.status, headers, ex.head.version or "1.1")
        ex.response_bytes += len(encoded) + len(reply.body)
        await self._send_down(encoded + reply.body)

    async def _send_down(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ClientGone from None

    def _account(self, ex: Exchange) -> None:
        head = ex.head
        done = Finished(
            method=head.method.decode("latin-1"),
            authority=(head.header(b"host") or b"").decode("latin-1"),
            path=head.target.decode("latin-1"), protocol=f"HTTP/{head.version}",
            request_id=ex.request_id.decode("latin-1"),
            traceparent=(head.header(b"traceparent") or b"").decode("latin-1"),
            started=ex.started, status=ex.status, flags=ex.flags,
            request_bytes=ex.request_bytes, response_bytes=ex.response_bytes,
        )  # fmt: skip
        self.account(done, ex.target, ex.plan)
