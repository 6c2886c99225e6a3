"""HBONE's view of a server-side stream: a CONNECT request before it is answered.

:func:`connect_handler` turns a handler of :class:`HboneRequest` into the
stream handler an :class:`~mesh.hbone.connection.HboneConnection` runs for
every incoming stream; requests that are not a valid HBONE CONNECT are
answered 400 without reaching the handler.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio

from mesh.hbone.stream import H2Stream, StreamOwner, StreamState
from mesh.identity import SpiffeId
from mesh.reason import Reason

log = structlog.get_logger("mesh.hbone")

RequestHandler = Callable[["HboneRequest"], Awaitable[None]]
StreamHandler = Callable[[H2Stream], Awaitable[None]]


class HboneRequest:
    """A CONNECT request received by a server, before it is answered.

    The handler answers exactly once: :meth:`accept` (200, returns the stream)
    or :meth:`reject` with a :class:`~mesh.reason.Reason` (its status and code are sent).
    """

    def __init__(self, stream: H2Stream, peer: SpiffeId) -> None:
        self.connection: StreamOwner = stream.connection
        self.stream = stream
        self.headers = stream.request_headers
        self.peer = peer  # verified by mTLS
        fields = dict(self.headers)
        self.method = fields.get(":method", "")
        self.authority = fields.get(":authority", "")

    @property
    def answered(self) -> bool:
        return self.stream.headers_sent

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def problem(self) -> str | None:
        """Why this is not a valid HBONE CONNECT, or None."""
        if self.method != "CONNECT":
            return f"method {self.method!r} is not CONNECT"
        if self.stream.state is not StreamState.OPEN:
            return "CONNECT request ended its stream"
        try:
            self.destination()
        except ValueError as exc:
            return str(exc)
        return None

    def destination(self) -> tuple[str, int]:
        """The ``(ip, port)`` named by ``:authority`` (:func:`parse_authority`)."""
        return parse_authority(self.authority)

    async def accept(self, headers: Sequence[tuple[str, str]] = ()) -> H2Stream:
        """Answer 200 and return the stream, now carrying the tunnelled bytes."""
        self._check_answer()
        self.stream.send_headers([(":status", "200"), *headers])
        await trio.lowlevel.checkpoint()
        return self.stream

    async def reject(self, reason: Reason) -> None:
        """Answer with the reason's status and its code in an ``ambit-reason`` header, and end
        the stream. Only the code leaves: the caller logs the details on its side."""
        self.reject_nowait(reason)
        await trio.lowlevel.checkpoint()

    def reject_nowait(self, reason: Reason) -> None:
        self._check_answer()
        self.stream.reject_nowait(reason)

    def _check_answer(self) -> None:
        if self.answered:
            raise RuntimeError("this CONNECT request was already answered")


def parse_authority(authority: str) -> tuple[str, int]:
    """``ip:port`` (``[ipv6]:port``) as HBONE's CONNECT names it, read strictly: an IP
    literal (no name, no zone), a port of ASCII digits without leading zeros, 1-65535.
    Python's ``int()`` takes full-width digits, or ``08080``, as 8080: a peer must not reach a
    port by a spelling a policy does not see. Raises ``ValueError`` saying what is wrong."""
    host, sep, port = authority.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or (port.startswith("0")):
        raise ValueError(f":authority {authority!r} is not ip:port (port: digits, no leading 0)")
    if not 0 < int(port) < 65536:
        raise ValueError(f":authority {authority!r}: port {port} is not 1-65535")
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not bracketed:
        raise ValueError(f":authority {authority!r}: an IPv6 address goes in brackets")
    host = host[1:-1] if bracketed else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f":authority {authority!r} does not name an IP address") from None
    if bracketed != (ip.version == 6) or "%" in host:
        raise ValueError(f":authority {authority!r} does not name an IP address")
    return str(ip), int(port)


def connect_handler(handler: RequestHandler) -> StreamHandler:
    """Run ``handler`` for every valid CONNECT; answer 400 to anything else."""

    async def handle(stream: H2Stream) -> None:
        peer = stream.connection.peer
        if peer is None:
            log.warning("hbone_bad_request", reason="HBONE needs a peer verified by mutual TLS")
            stream.reject_nowait(Reason.NOT_AUTHORIZED)
            return
        request = HboneRequest(stream, peer)
        problem = request.problem()
        if problem is not None:
            log.warning("hbone_bad_request", peer=str(peer), reason=problem)
            request.reject_nowait(Reason.BAD_REQUEST)
            return
        await handler(request)

    return handle
