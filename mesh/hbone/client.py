"""The HBONE client: a pool of mTLS HTTP/2 connections that opens CONNECT streams.

Invariants:
- A connection belongs to exactly one :class:`PoolKey` (source identity,
  destination address, expected destination identities): it presented that
  source's certificate and verified one of those identities, so it is never
  used for another key.
- Bookkeeping (choose a connection, reserve a stream slot) is synchronous and
  so atomic under Trio; dialing happens outside it, one dial per key at a time.
- A connection carries at most ``min(settings.max_concurrent_streams, the
  peer's SETTINGS_MAX_CONCURRENT_STREAMS)`` streams; past that a new one opens.
- A connection whose :meth:`~HboneConnection.serve` has returned is gone from
  the pool; idle ones close themselves after ``settings.idle_timeout``.
- A connection that received a GOAWAY is never chosen again; it closes itself
  once its streams end. An error on one connection never touches another, nor
  the pool.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
import trio

from mesh.concurrency import open_service_nursery
from mesh.credential import Presentable
from mesh.hbone.connection import HboneConnection
from mesh.hbone.settings import (
    HboneError,
    HboneRetryableError,
    HboneSettings,
    HboneStreamRefused,
    HboneStreamTimeout,
)
from mesh.hbone.stream import HboneStream
from mesh.identity import PeerVerificationError, SpiffeId
from mesh.reason import Reason, reason_for_dial_error, reason_for_rule
from mesh.tls import TlsError, TlsStream, client_context, configure_socket, describe_handshake_error

log = structlog.get_logger("mesh.hbone")

Dialer = Callable[[tuple[str, int]], Awaitable[trio.socket.SocketType]]


class HboneConnectError(HboneError):
    """No HBONE connection to the destination could be made, for ``reason``; ``rule`` names
    the TLS or identity check that failed, when one did. Not logged here: the caller
    decides what the failure means and logs it once."""

    def __init__(self, reason: Reason, detail: str, *, rule: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.rule = rule


def failure_reason(exc: HboneError) -> Reason:
    """Why a stream could not be opened, as one :class:`~mesh.reason.Reason`: the peer's own
    reason when it refused, the connection's when none could be made."""
    if isinstance(exc, HboneStreamRefused):
        return exc.reason or Reason.DESTINATION_REFUSED
    if isinstance(exc, HboneConnectError):
        return exc.reason
    if isinstance(exc, HboneStreamTimeout):
        return Reason.TIMEOUT
    return Reason.CONNECTION_RESET


@dataclass(frozen=True)
class PoolKey:
    source: SpiffeId
    address: tuple[str, int]
    expected: frozenset[SpiffeId]


async def dial_tcp(address: tuple[str, int]) -> trio.socket.SocketType:
    """Connect a plain TCP socket (the default dialer)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        configure_socket(sock)
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def traceparent() -> str:
    """A new W3C trace context, as Istio's ztunnel sends with every CONNECT."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class HboneClientPool:
    """Opens CONNECT streams over pooled connections. Use :func:`open_hbone_pool`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        certificates: Callable[[SpiffeId], Presentable],
        *,
        settings: HboneSettings,
        dial: Dialer = dial_tcp,
    ) -> None:
        self._nursery = nursery
        self._certificates = certificates
        self.settings = settings
        self._dial = dial
        self._conns: dict[PoolKey, list[HboneConnection]] = defaultdict(list)
        self._dial_locks: dict[PoolKey, trio.Lock] = defaultdict(trio.Lock)
        self.connections_opened = 0

    def statistics(self) -> dict[str, int]:
        conns = [c for cs in self._conns.values() for c in cs if not c.is_closed()]
        return {
            "connections": len(conns),
            "connections_opened": self.connections_opened,
            "streams": sum(c.statistics().streams for c in conns),
        }

    async def connect(
        self,
        *,
        source: SpiffeId,
        address: tuple[str, int],
        authority: str,
        expected: Sequence[SpiffeId] | frozenset[SpiffeId] = frozenset(),
        source_address: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> HboneStream:
        """Open ``CONNECT authority`` to the HBONE server at ``address`` as ``source``.

        Raises :class:`HboneConnectError` when no connection can be made,
        :class:`~mesh.hbone.HboneStreamRefused` when the server answers non-200,
        :class:`~mesh.hbone.settings.HboneStreamTimeout` when it does not answer in
        time. A stream the server's GOAWAY says it never processed is retried once.
        """
        key = PoolKey(source, address, frozenset(expected))
        extra = [("traceparent", traceparent())]
        if source_address:
            extra.append(("forwarded", f"for={source_address}"))
        try:
            return await self._open_stream(key, authority, [*extra, *headers])
        except HboneRetryableError as exc:
            # The server's GOAWAY crossed our CONNECT: it was never processed, and that
            # connection takes no more streams. Once more, on another one.
            log.info("hbone_stream_retried", dst=f"{address[0]}:{address[1]}", reason=str(exc))
            return await self._open_stream(key, authority, [*extra, *headers])

    async def _open_stream(
        self, key: PoolKey, authority: str, headers: list[tuple[str, str]]
    ) -> HboneStream:
        conn = self._checkout(key)
        if conn is None:
            async with self._dial_locks[key]:
                conn = self._checkout(key)
                if conn is None:
                    conn = await self._open_connection(key)
                    conn.reserved += 1
        conn.reserved -= 1  # open_stream registers the stream before it first yields
        return await conn.open_stream(authority, headers)

    def _checkout(self, key: PoolKey) -> HboneConnection | None:
        for conn in self._conns.get(key, ()):
            if conn.is_available():
                conn.reserved += 1
                return conn
        return None

    async def _open_connection(self, key: PoolKey) -> HboneConnection:
        settings = self.settings
        where = f"{key.address[0]}:{key.address[1]}"
        cert = self._certificates(key.source)
        try:
            with trio.fail_after(settings.connect_timeout):
                sock = await self._dial(key.address)
        except (OSError, trio.TooSlowError) as exc:
            failure = reason_for_dial_error(exc) if isinstance(exc, OSError) else Reason.TIMEOUT
            raise HboneConnectError(
                failure,
                f"could not connect to {where}: {exc or 'timed out'} (is the destination's HBONE"
                " port reachable, or blocked by a firewall or NetworkPolicy?)",
            ) from exc
        tls = TlsStream(sock, client_context(cert), server_side=False)
        try:
            with trio.fail_after(settings.handshake_timeout):
                await tls.handshake()
            peer = tls.verify_peer(
                trust_domain=cert.identity.trust_domain, expected=key.expected or None
            )
        except (TlsError, PeerVerificationError, trio.TooSlowError) as exc:
            sock.close()
            if isinstance(exc, PeerVerificationError):
                rule, reason = exc.rule, str(exc)
            elif isinstance(exc, trio.TooSlowError):
                rule, reason = "timeout", "no TLS handshake in time"
            else:
                rule, reason = describe_handshake_error(exc.__cause__ or exc)
            raise HboneConnectError(
                reason_for_rule(rule), f"TLS with {where} failed ({rule}): {reason}", rule=rule
            ) from exc
        except BaseException:  # cancelled mid-handshake: the socket is ours to close
            sock.close()
            raise
        conn = HboneConnection(
            tls, peer=peer, settings=settings, idle_timeout=settings.idle_timeout
        )
        self._conns[key].append(conn)
        self.connections_opened += 1
        self._nursery.start_soon(self._run, key, conn)
        return conn

    async def _run(self, key: PoolKey, conn: HboneConnection) -> None:
        try:
            await conn.serve()
        finally:
            conns = self._conns.get(key)
            if conns is not None and conn in conns:
                conns.remove(conn)
                if not conns:
                    del self._conns[key]
                    self._dial_locks.pop(key, None)
            error = conn.error
            if error is not None and error.code != 0:
                log.warning(
                    "hbone_connection_failed",
                    dst=f"{key.address[0]}:{key.address[1]}",
                    dst_identity=str(conn.peer),
                    reason=error.reason,
                )

    def close(self) -> None:
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close("pool closed")


@contextlib.asynccontextmanager
async def open_hbone_pool(
    certificates: Callable[[SpiffeId], Presentable],
    *,
    settings: HboneSettings | None = None,
    dial: Dialer = dial_tcp,
) -> AsyncIterator[HboneClientPool]:
    """An :class:`HboneClientPool` whose connections live inside this block."""
    async with open_service_nursery() as nursery:
        pool = HboneClientPool(
            nursery, certificates, settings=settings or HboneSettings(), dial=dial
        )
        try:
            yield pool
        finally:
            pool.close()
