"""RequestMirror: a copy of a request, sent to another backend, fire and forget.

The copy goes once the original's body has been read (up to :data:`MAX_BODY` bytes are
kept for it while the body streams; a bigger body is not mirrored), with ``-shadow``
appended to its authority as Envoy does, to an endpoint of the mirror's Service through
HBONE as the waypoint, in the HTTP version the mirror's port declares (h2c for ``http2``
and ``grpc``, HTTP/1.1 otherwise). Its answer is read and dropped; a failure is logged
once at debug level and never touches the original request or its response.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

import structlog
import trio

from mesh.hbone.settings import HboneError
from waypoint.body_copy import MAX_BODY, BodyCopy
from waypoint.bridge import h2_headers
from waypoint.decisions import MirrorTarget
from waypoint.destination import meshed_identity
from waypoint.http1 import Http1Error, encode_request_head, latin1
from waypoint.http_request import HttpRequest
from waypoint.protocol import declared
from waypoint.upstream import Target, UpstreamError, targets_of

if TYPE_CHECKING:
    from mesh.model import MeshSnapshot
    from waypoint.session import Shared

log = structlog.get_logger("waypoint")

MIRROR_SECONDS: Final = 10.0
_SKIPPED: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def start_mirrors(
    proxy: Shared,
    snapshot: MeshSnapshot,
    mirrors: tuple[MirrorTarget, ...],
    request: HttpRequest,
    body: BodyCopy | None,
    ours: tuple[tuple[str, str], ...] = (),
) -> None:
    """Send a copy of ``request`` (and ``body``) to each of ``mirrors`` in the background,
    with the headers the waypoint set on the original (``ours``: ``x-request-id``, so the
    copy can be matched with it, and ``x-forwarded-client-cert``), as Envoy's shadow has."""
    if body is not None and body.too_big:
        log.debug("mirror_skipped", reason=f"body over {MAX_BODY} bytes", path=request.path)
        return
    if ours:
        names = {n for n, _ in ours}
        kept = tuple(h for h in request.headers if h[0] not in names) + ours
        request = HttpRequest(request.method, request.path, request.authority, kept,
                              request.scheme)  # fmt: skip
    data = bytes(body.data) if body is not None else b""
    for target in mirrors:
        proxy.tasks.start_soon(_mirror, proxy, snapshot, target, request, data)


async def _mirror(
    proxy: Shared,
    snapshot: MeshSnapshot,
    target: MirrorTarget,
    request: HttpRequest,
    body: bytes,
) -> None:
    service = snapshot.service(target.service)
    endpoints = service.endpoints if service is not None else ()
    choice = proxy.balancer.pick(targets_of(endpoints, target.port, meshed_identity(snapshot)))
    if choice is None:
        log.debug("mirror_failed", mirror=target.service, reason="no endpoint")
        return
    port = service.port(target.port) if service is not None else None
    if declared(port) in ("http2", "grpc"):
        await _mirror_h2(proxy, target, choice, request, body)
        return
    headers = [(b"host", latin1(f"{request.authority}-shadow"))]
    headers += [(latin1(n), latin1(v)) for n, v in request.headers if n not in _SKIPPED]
    headers.append((b"content-length", b"%d" % len(body)))
    head = encode_request_head(
        latin1(request.method), latin1(request.path),
        headers,
    )  # fmt: skip
    with trio.move_on_after(MIRROR_SECONDS):
        try:
            conn = await proxy.upstreams.checkout(choice, ())
        except UpstreamError as exc:
            log.debug("mirror_failed", mirror=target.service, reason=str(exc))
            return
        reusable = False
        try:
            await conn.stream.send_all(head + body)
            answer = await conn.reader.read_head()
            if answer is not None:
                while await conn.reader.read_body():
                    pass
                reusable = answer.keep_alive
        except (Http1Error, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("mirror_failed", mirror=target.service, reason=str(exc))
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await proxy.upstreams.release(conn, reusable=reusable)


async def _mirror_h2(
    proxy: Shared, target: MirrorTarget, choice: Target, request: HttpRequest, body: bytes
) -> None:
    """The copy as an HTTP/2 request on the multiplexed connection to ``choice``."""
    shadow = HttpRequest(request.method, request.path, f"{request.authority}-shadow",
                         request.headers, request.scheme)  # fmt: skip
    headers = [(n, v) for n, v in h2_headers(shadow, ()) if n not in _SKIPPED]
    with trio.move_on_after(MIRROR_SECONDS):
        try:
            conn = await proxy.h2.connection(choice, [])
            stream = conn.start_request(headers, end_stream=not body)
            async with stream:
                if body:
                    await stream.send_all(body)
                    await stream.send_eof()
                await stream.wait_response()
                while await stream.receive_some():
                    pass
        except (UpstreamError, HboneError, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:  # fmt: skip
            log.debug("mirror_failed", mirror=target.service, reason=str(exc))
