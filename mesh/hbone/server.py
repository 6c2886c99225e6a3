"""The HBONE listener: accepts mTLS connections, verifies the peer's SPIFFE
identity, and hands every CONNECT stream to a handler.

A connection that fails its handshake, presents a bad identity or breaks
HTTP/2 is logged and closed; every other connection keeps serving. During a flood
of bad handshakes, ``hbone_handshake_rejected`` is logged once per rule per
``settings.rejection_log_window``; the rest are counted (``suppressed=N``). Given a
``pending`` :class:`~mesh.pending.Admitter`, a connection counts as pending
until its handshake is over, and one its source may not have is reset at once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import structlog
import trio

from mesh.constants import HBONE_PORT
from mesh.credential import Presentable
from mesh.hbone.connection import HboneConnection
from mesh.hbone.request import RequestHandler, connect_handler
from mesh.hbone.settings import HboneSettings
from mesh.identity import PeerVerificationError, SpiffeId
from mesh.loglimit import LogLimiter
from mesh.net import open_listener, reset_on_close, serve_listeners
from mesh.pending import Admitter
from mesh.tls import TlsError, TlsStream, describe_handshake_error, server_context

log = structlog.get_logger("mesh.hbone")

CertificateSource = Callable[[], Presentable]


class ServerConnections:
    """A server's live HBONE connections, so a drain can say GOAWAY to each: to those
    open now, and to any that completes its handshake while the drain runs."""

    def __init__(self) -> None:
        self.live: set[HboneConnection] = set()
        self.draining = False

    async def drain(self) -> None:
        """Two-phase GOAWAY on every live connection (their open streams finish)."""
        self.draining = True
        async with trio.open_nursery() as nursery:
            for conn in list(self.live):
                nursery.start_soon(conn.graceful_goaway)


async def serve_hbone(
    handler: RequestHandler,
    *,
    certificate: CertificateSource,
    host: str = "127.0.0.1",
    port: int = HBONE_PORT,
    listener: trio.socket.SocketType | None = None,
    settings: HboneSettings | None = None,
    handler_nursery: trio.Nursery | None = None,
    connections: ServerConnections | None = None,
    pending: Admitter | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HBONE until cancelled; ``task_status.started`` gets the bound address.

    ``certificate`` is asked for the current certificate at every handshake, so
    a renewed certificate is presented from the next connection on. Pass a
    ready ``listener`` to serve a socket made elsewhere (inside a pod's netns),
    and a ``handler_nursery`` to own the connections (so a drain can stop
    accepting while they finish); by default they end with this call. Each live
    connection is kept in ``connections`` when given, so a drain can say GOAWAY to it.
    With ``pending``, each connection is admitted by its source IP before its handshake
    and released after it; one that is not admitted is reset at once.
    """
    settings = settings or HboneSettings()
    sock = listener if listener is not None else await open_listener(host, port)
    bound = sock.getsockname()
    rejections = LogLimiter(settings.rejection_log_window)

    async def serve(stream: trio.SocketStream) -> None:
        addr = stream.socket.getpeername()
        if pending is not None and not pending.admit(addr[0]):
            reset_on_close(stream.socket)
            return  # serve_listeners closes it
        await _serve_connection(
            stream.socket, (addr[0], addr[1]), handler, certificate, settings, rejections,
            connections, pending,
        )  # fmt: skip

    async with trio.open_nursery() as own:
        handlers = handler_nursery or own
        await own.start(partial(serve_listeners, serve, [sock], handler_nursery=handlers,
                                name="hbone"))  # fmt: skip
        own.start_soon(_report_suppressed, rejections)
        task_status.started((bound[0], bound[1]))


async def _report_suppressed(rejections: LogLimiter) -> None:
    """Every window, one summary line (no ``src``) per rule whose rejections were held
    back: ``suppressed=N`` and the last one's reason."""
    while True:
        await trio.sleep(rejections.window)
        for rule, suppressed, last in rejections.due(trio.current_time()):
            log.warning(
                "hbone_handshake_rejected", rule=rule, reason=last["reason"], suppressed=suppressed
            )


async def _serve_connection(
    sock: trio.socket.SocketType,
    addr: tuple[str, int],
    handler: RequestHandler,
    certificate: CertificateSource,
    settings: HboneSettings,
    rejections: LogLimiter,
    connections: ServerConnections | None = None,
    pending: Admitter | None = None,
) -> None:
    src = f"{addr[0]}:{addr[1]}"
    try:
        peer = await _handshake(sock, src, certificate, settings, rejections)
    finally:
        if pending is not None:
            pending.release(addr[0])
    if peer is None:
        return
    tls, peer_id = peer
    conn = HboneConnection(
        tls,
        peer=peer_id,
        settings=settings,
        handler=connect_handler(handler),
        peer_address=(addr[0], addr[1]),
    )
    log.debug("hbone_connection_opened", src=src, src_identity=str(peer_id))
    if connections is not None:
        connections.live.add(conn)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            if connections is not None and connections.draining:
                nursery.start_soon(conn.graceful_goaway)  # arrived during a drain
    finally:
        if connections is not None:
            connections.live.discard(conn)
    error = conn.error
    if error is not None and error.code != 0:
        log.warning(
            "hbone_connection_failed", src=src, src_identity=str(peer_id), reason=error.reason
        )
    else:
        log.debug("hbone_connection_closed", src=src, src_identity=str(peer_id))


async def _handshake(
    sock: trio.socket.SocketType,
    src: str,
    certificate: CertificateSource,
    settings: HboneSettings,
    rejections: LogLimiter,
) -> tuple[TlsStream, SpiffeId] | None:
    """TLS with the current certificate and the peer's identity verified; None (logged,
    closed) when either fails."""
    cert = certificate()
    tls = TlsStream(sock, server_context(cert), server_side=True)
    try:
        with trio.fail_after(settings.handshake_timeout):
            await tls.handshake()
        peer = tls.verify_peer(trust_domain=cert.identity.trust_domain)
    except (TlsError, PeerVerificationError, trio.TooSlowError) as exc:
        if isinstance(exc, PeerVerificationError):
            rule, reason = exc.rule, str(exc)
        elif isinstance(exc, trio.TooSlowError):
            rule, reason = "timeout", f"no TLS handshake within {settings.handshake_timeout:g}s"
        else:
            rule, reason = describe_handshake_error(exc.__cause__ or exc)
        now = trio.current_time()
        if (fields := rejections.admit(rule, now, src=src, rule=rule, reason=reason)) is not None:
            log.warning("hbone_handshake_rejected", **fields)
        await tls.aclose()
        return None
    except BaseException:
        sock.close()
        raise
    return tls, peer
