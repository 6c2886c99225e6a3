"""One HTTP/1.x request at the waypoint, as :mod:`waypoint.http_session` carries it
out: the :class:`Exchange` (what it did, for its metrics and its access-log line) and
:class:`ClientGone` (the downstream connection broke)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Final

import trio

from mesh.relay import relay
from mesh.response_flags import ResponseFlag
from waypoint.backends import Backend
from waypoint.body_copy import BodyCopy
from waypoint.dispatch import Plan
from waypoint.http1 import Head, Http1Error, encode_request_head, encode_response_head, latin1
from waypoint.replies import Failed, cut_by_shutdown, no_healthy_upstream
from waypoint.retries import Retries
from waypoint.session import IdleTimer
from waypoint.telemetry import Finished, new_request_id
from waypoint.upstream import Connection, Target

XFCC: Final = b"x-forwarded-client-cert"


@dataclass
class Exchange:
    """What one request did, for its metrics and its access-log line."""

    head: Head
    started: float
    request_id: bytes
    plan: Plan | None = None
    body_copy: BodyCopy | None = None  # kept for the route's mirrors and its retries
    body_read: bool = False  # the request's whole body was read
    body_error: Exception | None = None  # the client's body broke off: why
    idle: IdleTimer | None = None  # the stream idle timeout, while the body is to come
    status: int = 0
    flags: str = "-"
    target: Target | None = None
    backend: Backend | None = None  # the backend Service's state, once chosen
    retries: Retries | None = None  # the rule's retry on status codes
    request_bytes: int = 0
    response_bytes: int = 0

    def count_request(self, n: int) -> None:
        self.request_bytes += n

    @property
    def replayable(self) -> bool:
        """Whether the request can be sent again: it has no body, or its whole body was
        read and kept (no more than the copy's bound)."""
        copy = self.body_copy
        return not self.head.has_body or (copy is not None and copy.replayable)


class ClientGone(Exception):
    """The downstream connection broke: nothing more can be sent on it."""


def request_head(ex: Exchange, xfcc: str) -> bytes:
    """The head of ``ex``'s request as it goes to the app."""
    head = ex.head
    plan = ex.plan
    method, target = head.method, head.target
    if plan is not None and plan.rewritten:  # routes or JWT outputs made it anew
        request = plan.request
        method, target = latin1(request.method), latin1(request.path)
        headers = [(b"host", latin1(request.authority))]
        headers += [(latin1(n), latin1(v)) for n, v in request.headers if n not in _OURS]
    else:
        headers = [(n, v) for n, v in head.end_to_end() if n not in _OURS_BYTES]
    headers.append((b"x-request-id", ex.request_id))
    headers.append((XFCC, xfcc.encode()))
    if head.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    elif head.content_length is not None:
        headers.append((b"content-length", b"%d" % head.content_length))
    if head.upgrade:
        headers += [(b"connection", b"upgrade"), (b"upgrade", head.header(b"upgrade") or b"")]
    ex.request_bytes += sum(len(n) + len(v) + 4 for n, v in headers)
    return encode_request_head(method, target, headers)


_OURS: Final = frozenset({"host", "x-request-id", "x-forwarded-client-cert", "content-length",
                          "transfer-encoding", "connection", "upgrade"})  # fmt: skip
_OURS_BYTES: Final = frozenset({XFCC, b"x-request-id"})


def next_target(
    ex: Exchange, backend: Backend, targets: list[Target], tried: list[Target]
) -> Target:
    """The endpoint of the next attempt (after :func:`backoff`, for a retry)."""
    target = backend.pick(targets, avoid=tried)
    if target is None:  # every endpoint ejected
        raise Failed(no_healthy_upstream(grpc=False))
    tried.append(target)
    return target


async def backoff(ex: Exchange) -> None:
    """A request sent again on its answer (a retry on status) waits its backoff first."""
    if ex.retries and ex.retries.done:
        await trio.sleep(ex.retries.backoff())


async def answer_cut(stream: trio.abc.SendStream, ex: Exchange) -> None:
    """A request unanswered when the waypoint stops (its drain ran out, or its connection
    failed): 503 ``LR`` and the connection closed, not an empty reply (half a second at
    most, shielded); an answer that had begun is only flagged ``LR``."""
    if getattr(stream, "broken", False):  # its CONNECT stream was reset: the client left
        ex.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION.value
        return
    ex.flags = ResponseFlag.LOCAL_RESET.value
    if ex.status or ex.response_bytes:
        return
    reply = cut_by_shutdown(grpc=False)
    ex.status = reply.code
    data = reply.http1(keep_alive=False)
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(0.5),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.send_all(data)
        ex.response_bytes += len(data)


async def refuse(stream: trio.abc.SendStream, exc: Http1Error, authority: str) -> Finished:
    """Answer a head that cannot be read with its status and close (the client may be
    gone: nothing is raised); the request as it is counted and logged: its status,
    ``DPE`` (Envoy's flag for a codec error), method and path ``-``."""
    started = time.monotonic()
    body = exc.reason.encode() + b"\n"
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)),
               (b"connection", b"close")]  # fmt: skip
    reply = encode_response_head(exc.status, headers) + body
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(reply)
    return Finished(
        method="-", authority=authority, path="-", protocol="HTTP/1.1",
        request_id=new_request_id(), traceparent="", started=started, status=exc.status,
        flags=ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR.value, response_bytes=len(reply),
    )  # fmt: skip


async def relay_upgrade(
    down: trio.abc.HalfCloseableStream, upgraded: bytes | None, conn: Connection,
    ex: Exchange, response: Head,
) -> None:  # fmt: skip
    """The app switched protocols: its 101 down, then bytes both ways (``upgraded``: what
    the client sent past its head) until either side ends; ``conn`` is closed after."""
    try:
        await down.send_all(encode_response_head(101, response.headers, ex.head.version))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise ClientGone from None
    try:
        if upgraded:
            await conn.stream.send_all(upgraded)
        if conn.reader.upgraded:
            await down.send_all(conn.reader.upgraded)
        await relay(down, conn.stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await conn.aclose()
