"""The waypoint's local replies: answers it gives itself instead of the destination's, pure.

A :class:`LocalReply` is a status, headers and body, the response flag and Envoy's response
code details for telemetry, and, for a gRPC caller, the gRPC status. The same values an
Envoy waypoint sends, so clients and dashboards see what they see with Istio:

| why | HTTP | body | flag | gRPC status |
| --- | --- | --- | --- | --- |
| AuthorizationPolicy denied | 403 | ``RBAC: access denied`` | ``-`` | PERMISSION_DENIED |
| JWT refused | 401 (audiences 403) | Envoy's (``Jwt is expired``...) | ``-`` | UNAUTHENTICATED |
| no route | 404 | (empty) | NR | UNIMPLEMENTED |
| no healthy endpoint | 503 | ``no healthy upstream`` | UH | UNAVAILABLE |
| connect failed | 503 | ``upstream connect error ...: connection failure`` | UF | UNAVAILABLE |
| reset before answering | 503 | ``...: connection termination`` | UC | UNAVAILABLE |
| retries exhausted | 503 | as the last failure | URX | UNAVAILABLE |
| circuit open (connection pool full) | 503 | ``...: overflow`` | UO | UNAVAILABLE |
| FaultInjection abort | as configured | ``fault filter abort`` | FI | as configured |
| rate limited (LocalRateLimit) | 429 | ``local_rate_limited`` | RL | UNAVAILABLE |
| route timeout | 504 | ``upstream request timeout`` | UT | DEADLINE_EXCEEDED |
| malformed request body | 400 | what was wrong | DPE | INTERNAL |
| unanswered when the drain ran out | 503 | ``the waypoint is shutting down`` | LR | UNAVAILABLE |
| malformed HTTP/1.1 head | 400, 408, 413, 414, 431, 501, 505 | what was wrong | DPE | |
| client gone half-way through its body | none sent | | DC | |

A gRPC caller (``content-type: application/grpc`` or ``application/grpc+...``) gets a
*trailers-only* reply: ``:status 200``, ``content-type: application/grpc``, ``grpc-status``
from gRPC's HTTP-to-gRPC table (:func:`grpc_status_for`; a route timeout says
DEADLINE_EXCEEDED, as Envoy's router does) and the body as ``grpc-message``,
percent-encoded; no body, so HTTP/2 ends the stream on the HEADERS frame.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from mesh.response_flags import ResponseFlag
from waypoint.jwt import JwtFailure

RBAC_DENIED_BODY = "RBAC: access denied"
GRPC_CONTENT_TYPE = "application/grpc"
_UPSTREAM_RESET = "upstream connect error or disconnect/reset before headers. reset reason: "


class GrpcStatus(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# gRPC's doc/http-grpc-status-mapping.md: what a client makes of an HTTP status without a
# grpc-status; every other status is UNKNOWN.
_HTTP_TO_GRPC = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}


def grpc_status_for(http_status: int) -> GrpcStatus:
    """The gRPC status gRPC's table gives an HTTP status."""
    return _HTTP_TO_GRPC.get(http_status, GrpcStatus.UNKNOWN)


def is_grpc(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether the request is gRPC (not gRPC-Web): its content-type is ``application/grpc``
    or ``application/grpc+<codec>``."""
    for name, value in headers:
        if name.lower() == "content-type":
            media = value.partition(";")[0].strip().lower()
            return media == GRPC_CONTENT_TYPE or media.startswith(GRPC_CONTENT_TYPE + "+")
    return False


def percent_encode(message: str) -> str:
    """``grpc-message`` encoding: UTF-8, then every byte outside ``0x20-0x7E``, and ``%``,
    as ``%XX``."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode()
    )


@dataclass(frozen=True)
class LocalReply:
    """A reply as sent: ``status`` (200 for gRPC), ``headers`` (lower-case, without
    ``:status``), ``body``. ``code`` is the HTTP status it stands for (403 for a denied gRPC
    call too); ``grpc_status`` is set for a gRPC-shaped reply."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    code: int
    flag: ResponseFlag = ResponseFlag.NONE
    details: str = ""
    grpc_status: GrpcStatus | None = None

    @property
    def trailers_only(self) -> bool:
        """A gRPC reply in one HEADERS frame ending the stream."""
        return self.grpc_status is not None

    def h2_headers(self) -> list[tuple[str, str]]:
        """The HTTP/2 header block (end the stream with it when :attr:`trailers_only`)."""
        return [(":status", str(self.status)), *self.headers]

    def http1(self, *, keep_alive: bool = True) -> bytes:
        """The whole HTTP/1.1 response (a gRPC one framed by ``content-length: 0``)."""
        reason = HTTPStatus(self.status).phrase if self.status in _PHRASES else ""
        lines = [f"HTTP/1.1 {self.status} {reason}".rstrip()]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if not any(name == "content-length" for name, _ in self.headers):
            lines.append(f"content-length: {len(self.body)}")
        if not keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


_PHRASES = frozenset(s.value for s in HTTPStatus)


def local_reply(
    status: int,
    body: str,
    *,
    grpc: bool,
    flag: ResponseFlag = ResponseFlag.NONE,
    details: str = "",
    headers: Iterable[tuple[str, str]] = (),
    grpc_status: GrpcStatus | None = None,
) -> LocalReply:
    """A reply meaning HTTP ``status`` with ``body``, gRPC-shaped for a gRPC caller
    (``grpc_status`` overrides gRPC's table)."""
    extra = tuple((n.lower(), v) for n, v in headers)
    if grpc:
        code = grpc_status if grpc_status is not None else grpc_status_for(status)
        grpc_headers = [("content-type", GRPC_CONTENT_TYPE), ("grpc-status", str(int(code)))]
        if body:
            grpc_headers.append(("grpc-message", percent_encode(body)))
        return LocalReply(200, (*grpc_headers, *extra), b"", status, flag, details, code)
    data = body.encode()
    plain = (("content-type", "text/plain"), ("content-length", str(len(data))))
    return LocalReply(status, (*plain, *extra), data, status, flag, details)


# --- the waypoint's replies ------------------------------------------------------------------


def rbac_denied(
    *, grpc: bool, details: str = "rbac_access_denied_matched_policy[none]"
) -> LocalReply:
    """AuthorizationPolicy denied the request (``details``: the decision's)."""
    return local_reply(403, RBAC_DENIED_BODY, grpc=grpc, details=details)


def jwt_refused(failure: JwtFailure, *, grpc: bool, realm: str) -> LocalReply:
    """RequestAuthentication refused the request's token; ``realm`` is the request's URL
    (``http://host/path``), named in ``www-authenticate`` as Envoy does."""
    challenge = f'Bearer realm="{realm}", error="invalid_token"'
    return local_reply(
        failure.status,
        failure.value,
        grpc=grpc,
        details=failure.details,
        headers=[("www-authenticate", challenge)],
    )


def no_route(*, grpc: bool) -> LocalReply:
    return local_reply(
        404, "", grpc=grpc, flag=ResponseFlag.NO_ROUTE_FOUND, details="route_not_found"
    )


def no_healthy_upstream(*, grpc: bool) -> LocalReply:
    return local_reply(
        503,
        "no healthy upstream",
        grpc=grpc,
        flag=ResponseFlag.NO_HEALTHY_UPSTREAM,
        details="no_healthy_upstream",
    )


def upstream_failure(*, grpc: bool, connected: bool, retries_exhausted: bool = False) -> LocalReply:
    """The destination could not be reached (``connected`` False: the connection failed) or
    reset before answering; after the last retry, flagged URX."""
    reason = "connection termination" if connected else "connection failure"
    flag = (
        ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
        if connected
        else (ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
    )
    if retries_exhausted:
        flag = ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED
    details = f"upstream_reset_before_response_started{{{reason.replace(' ', '_')}}}"
    return local_reply(503, _UPSTREAM_RESET + reason, grpc=grpc, flag=flag, details=details)


def overflow(*, grpc: bool) -> LocalReply:
    """The backend's circuit is open (its DestinationRule's connection pool is full)."""
    flag = ResponseFlag.UPSTREAM_OVERFLOW
    return local_reply(503, _UPSTREAM_RESET + "overflow", grpc=grpc, flag=flag,
                       details="upstream_overflow")  # fmt: skip


def route_timeout(*, grpc: bool) -> LocalReply:
    """The route's timeout passed before the answer: 504, or DEADLINE_EXCEEDED for gRPC."""
    return local_reply(
        504,
        "upstream request timeout",
        grpc=grpc,
        flag=ResponseFlag.UPSTREAM_REQUEST_TIMEOUT,
        details="upstream_response_timeout",
        grpc_status=GrpcStatus.DEADLINE_EXCEEDED,
    )


def upstream_failure_http1(*, connected: bool) -> Failed:
    """:func:`upstream_failure` for an HTTP/1.x client, raised."""
    return Failed(upstream_failure(grpc=False, connected=connected))


def bad_upstream_answer(exc: BaseException) -> Failed:
    """The app answered something that is not HTTP (``exc`` says what): 502 ``UPE``."""
    reply = local_reply(502, "upstream answered badly", grpc=False,
                        flag=ResponseFlag.UPSTREAM_PROTOCOL_ERROR, details=str(exc))  # fmt: skip
    return Failed(reply)


def stream_idle_timeout(*, grpc: bool) -> LocalReply:
    """No byte either way for the stream idle timeout, before the answer: 408, as Envoy."""
    return local_reply(
        408,
        "stream timeout",
        grpc=grpc,
        flag=ResponseFlag.STREAM_IDLE_TIMEOUT,
        details="stream_idle_timeout",
        grpc_status=GrpcStatus.DEADLINE_EXCEEDED,
    )


def cut_by_shutdown(*, grpc: bool) -> LocalReply:
    """A request still unanswered when the waypoint's drain ran out (or its connection
    failed): 503 with ``LR`` (a local reset), UNAVAILABLE to a gRPC caller (a status it may
    retry), instead of an empty reply or a reset it cannot read."""
    return local_reply(
        503, "the waypoint is shutting down", grpc=grpc,
        flag=ResponseFlag.LOCAL_RESET, details="waypoint_shutdown",
    )  # fmt: skip


def malformed_request(reason: str) -> LocalReply:
    """The client's request broke HTTP/1.1 after its head had gone to the app (a bad
    chunk): 400, the connection closes."""
    return local_reply(400, reason, grpc=False, flag=ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR,
                       details="downstream_protocol_error")  # fmt: skip


class Failed(Exception):
    """The waypoint answers the request itself, with ``reply``."""

    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.details)
        self.reply = reply
