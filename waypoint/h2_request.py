"""One HTTP/2 request at the waypoint, as :mod:`waypoint.h2_session` carries it out: the
:class:`H2Request` (what it did, for its metrics and its access-log line), the reads of
its header block (``:path`` normalized, the request as routes see it, ``grpc-status``),
and :class:`PrefixedStream` for a connection whose first bytes were read to sniff it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import trio

from mesh.response_flags import ResponseFlag
from waypoint.body_copy import BodyCopy
from waypoint.dispatch import Plan
from waypoint.http_request import HttpRequest
from waypoint.http_target import TargetError, read_target
from waypoint.replies import Failed, local_reply
from waypoint.retries import Retries
from waypoint.session import IdleTimer
from waypoint.telemetry import GrpcMessages
from waypoint.upstream import Target

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
class H2Request:
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
    body_copy: BodyCopy | None = None  # kept for the route's mirrors and its retries
    body_read: bool = False  # the request's whole body was read
    has_body: bool = False  # a body follows its headers
    retries: Retries | None = None  # the rule's retry on status codes
    sent_messages: GrpcMessages = field(default_factory=GrpcMessages)
    received_messages: GrpcMessages = field(default_factory=GrpcMessages)
    idle: IdleTimer | None = None  # the stream idle timeout, while a body is to come

    def active(self) -> None:
        """A byte moved: the stream idle timeout starts again."""
        if self.idle is not None:
            self.idle.active()

    @property
    def replayable(self) -> bool:
        """Whether the request can be sent again: it has no body, or its whole body was
        read and kept (no more than the copy's bound)."""
        copy = self.body_copy
        return not self.has_body or (copy is not None and copy.replayable)

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")


def grpc_status_of(headers: list[tuple[str, str]], default: str) -> str:
    """``grpc-status`` as metrics and the access log read it: a code of one or two digits,
    anything else UNKNOWN (2), as a gRPC client reads it; an app cannot mint label values."""
    value = next((v for k, v in headers if k == "grpc-status"), None)
    if value is None:
        return default
    return value if value.isascii() and value.isdigit() and len(value) <= 2 else "2"


def normalized(headers: list[tuple[str, str]], *, grpc: bool) -> list[tuple[str, str]]:
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


def request_of(headers: list[tuple[str, str]]) -> HttpRequest:
    """The request as routes and policies read it: pseudo-headers become its parts."""
    fields = {k: v for k, v in headers if k.startswith(":")}
    rest = tuple((k, v) for k, v in headers if not k.startswith(":") and k not in HOP_BY_HOP)
    method, path = fields.get(":method", ""), fields.get(":path", "")
    return HttpRequest(
        method, path, fields.get(":authority", ""), rest, fields.get(":scheme", "http")
    )
