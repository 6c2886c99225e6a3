"""The CA signing service: TLS + HTTP/2 on port 15012. Each connection runs our
one HTTP/2 engine (:class:`mesh.hbone.Http2Connection`, over
``trio.SSLStream``), which hands each request to :func:`ca.api.api_stream_handler`.

The service presents ``spiffe://<td>/ns/ambit-system/sa/ambit-controlplane``,
issued by the CA itself, re-issued at half-life and when its root is retired.
It does not ask for client certificates: callers prove who they are with a
bearer token. A connection that misbehaves (garbage, wrong ALPN, a vanished
peer, silence) is logged once and closed; it never disturbs the others.
"""

from __future__ import annotations

import datetime as dt
import ssl
from functools import partial
from typing import Final

import structlog
import trio
from cryptography import x509
from h2.errors import ErrorCodes

from ca.api import CertificateApi, api_stream_handler
from ca.auth import Authenticator, Authorizer, Reviewer
from ca.authority import CertificateAuthority
from mesh.constants import CONTROL_PLANE_PORT
from mesh.hbone import HboneSettings, Http2Connection
from mesh.hbone.transport import TRANSPORT_ERRORS, StreamTransport
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.net import serve_listeners
from mesh.tls import ALPN_H2, server_context

log = structlog.get_logger("ca.service")

EVENT_LISTENING: Final = "ca_service_listening"
EVENT_CONNECTION_FAILED: Final = "ca_connection_failed"
EVENT_CONNECTION_IDLE: Final = "ca_connection_idle_closed"

SERVICE_CALLER: Final = "ca-service"  # the caller name logged for the service's own certificate
# Requests and answers are a few KiB: small windows and frames keep a connection small.
HTTP2_SETTINGS: Final = HboneSettings(
    stream_window=256 * 1024,
    connection_window=1024 * 1024,
    max_frame_size=16_384,
    write_buffer_limit=256 * 1024,
)
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_IDLE_TIMEOUT: Final = 60.0

Address = tuple[str, int]


class _ServingIdentity:
    """The service's own certificate and TLS context, kept fresh.

    It is re-issued at half-life, and at once if the root it chains to was
    retired. It is deliberately *not* re-issued when the root rotates: clients
    that have not talked to the CA since still trust only the old root, and
    they learn the new one from their next answer (the trust bundle).
    """

    def __init__(self, authority: CertificateAuthority, identity: SpiffeId) -> None:
        self._authority = authority
        self._identity = identity
        self._cert: WorkloadCertificate | None = None
        self._context: ssl.SSLContext | None = None
        self._root: x509.Certificate | None = None

    def context(self) -> ssl.SSLContext:
        now = dt.datetime.now(dt.UTC)
        if (
            self._cert is None
            or self._context is None
            or now >= self._cert.renew_at()
            or self._root not in self._authority.trust_bundle.roots
        ):
            self._root = self._authority.root
            self._cert = self._authority.issue_workload_certificate(
                self._identity, caller=SERVICE_CALLER
            )
            self._context = server_context(self._cert, require_client_cert=False)
        return self._context


class _Connection:
    """Serves one accepted connection; every failure ends here, logged once."""

    def __init__(
        self,
        stream: trio.SocketStream,
        context: ssl.SSLContext,
        api: CertificateApi,
        handshake_timeout: float,
        idle_timeout: float,
    ) -> None:
        self._tls = trio.SSLStream(stream, context, server_side=True)
        self._api = api
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._src = _peer_of(stream)

    async def serve(self) -> None:
        phase = "handshake"
        clean = False  # the connection ended normally: close with close_notify
        try:
            with trio.fail_after(self._handshake_timeout):
                await self._tls.do_handshake()
            alpn = self._tls.selected_alpn_protocol()
            if alpn != ALPN_H2:
                self._failed(
                    "wrong-alpn", f"client negotiated ALPN {alpn!r}, not {ALPN_H2!r} (HTTP/2)"
                )
                return
            phase = "http2"
            connection = Http2Connection(
                StreamTransport(self._tls),
                peer=None,  # callers prove who they are with a bearer token
                settings=HTTP2_SETTINGS,
                handler=api_stream_handler(self._api.handle, src=self._src),
                idle_timeout=self._idle_timeout,
                client_side=False,
            )
            await connection.serve()
            error = connection.error
            if error is not None and isinstance(error.__cause__, TRANSPORT_ERRORS):
                self._failed("connection-lost", error.reason)
            elif error is not None and error.code != ErrorCodes.NO_ERROR:
                self._failed("protocol-error", error.reason)
            else:
                if error is not None and error.reason == "idle":
                    log.info(EVENT_CONNECTION_IDLE, src=self._src, idle_seconds=self._idle_timeout)
                clean = True
        except trio.TooSlowError:
            self._failed(f"{phase}-timeout", f"the client stalled during the {phase}")
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__ or exc
            reason = "tls-handshake" if phase == "handshake" else "connection-lost"
            self._failed(reason, f"{type(cause).__name__}: {cause}")
        except Exception as exc:  # one connection's bug must not stop the service
            log.exception(
                EVENT_CONNECTION_FAILED, src=self._src, reason="internal-error", detail=str(exc)
            )
        finally:
            if clean:
                with trio.move_on_after(self._handshake_timeout):
                    await self._tls.aclose()
            await trio.aclose_forcefully(self._tls)

    def _failed(self, reason: str, detail: str) -> None:
        log.warning(EVENT_CONNECTION_FAILED, src=self._src, reason=reason, detail=detail)


def _peer_of(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "unknown"
    return f"{host}:{port}"


async def serve_ca(
    authority: CertificateAuthority,
    authenticator: Authenticator | Reviewer,
    authorizer: Authorizer,
    *,
    host: str | None = None,
    port: int = CONTROL_PLANE_PORT,
    identity: SpiffeId | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``POST /v1/certificates`` until cancelled.

    ``host=None`` listens on every interface. Calls ``task_status.started``
    with the bound ``(host, port)`` addresses once listening, so callers can
    bind port 0 and learn the port. ``identity`` is what the service presents;
    by default the control plane's. With a ``handler_nursery``, accepted
    connections live there, so a drain can stop accepting (cancel this call)
    while the requests in flight finish.
    """
    serving = _ServingIdentity(authority, identity or authority.config.control_plane_identity)
    serving.context()  # fail before listening if the CA cannot issue our own certificate
    api = CertificateApi(authority, authenticator, authorizer)

    async def handle(stream: trio.SocketStream) -> None:
        connection = _Connection(stream, serving.context(), api, handshake_timeout, idle_timeout)
        await connection.serve()

    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"the CA cannot listen on {host or '*'}:{port}: {exc.strerror}"
            " (is another control plane running?)",
        ) from exc
    addresses: list[Address] = [
        (str(listener.socket.getsockname()[0]), int(listener.socket.getsockname()[1]))
        for listener in listeners
    ]
    async with trio.open_nursery() as nursery:
        handlers = handler_nursery if handler_nursery is not None else nursery
        await nursery.start(
            partial(serve_listeners, handle, listeners, handler_nursery=handlers, name="ca")
        )
        log.info(EVENT_LISTENING, addresses=[f"{h}:{p}" for h, p in addresses])
        task_status.started(addresses)
