"""The client of the control plane's tap API (:mod:`k8s.tap_server`): what ``ambit tap``
runs. HTTPS/1.1 (h11) to the control plane, whose certificate must chain to the trust
bundle and name the control plane's identity; a bearer token; the answer read as JSON
lines and handed, one object at a time, to the caller until it has had enough or the
server ends the stream. :func:`get` reads one answer of the same API whole (``ambit
dashboard``'s pages).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any, Final, NamedTuple
from urllib.parse import urlencode

import h11
import trio

from mesh.identity import PeerVerificationError, SpiffeId, TrustBundle, verify_peer
from mesh.tls import bootstrap_client_context

TAP_PATH: Final = "/v1/tap"
CONNECT_TIMEOUT: Final = 10.0  # connecting, the handshake and the answer's head
MAX_LINE: Final = 1024 * 1024
MAX_BODY: Final = 32 * 1024 * 1024


class TapClientError(Exception):
    """The tap could not start or broke; ``status`` is the server's HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def tap(
    address: tuple[str, int],
    *,
    identity: SpiffeId,
    bundle: TrustBundle,
    token: str | None,
    query: dict[str, str],
    on_line: Callable[[dict[str, Any]], bool],
) -> None:
    """Stream ``GET /v1/tap?query`` from ``address``; each JSON line goes to ``on_line``,
    which returns False to stop. Returns when it did, or when the server ended the stream;
    raises :class:`TapClientError` (with the server's status and its words when it
    refused)."""
    where = f"{address[0]}:{address[1]}"
    with trio.move_on_after(CONNECT_TIMEOUT) as connecting:
        tls = await _connect(address, bundle, where)
    if connecting.cancelled_caught:
        raise TapClientError(f"no answer from the control plane's tap API at {where}")
    async with tls:
        conn = h11.Connection(h11.CLIENT)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                response = await _ask(tls, conn, identity, where, token,
                                      f"{TAP_PATH}?{urlencode(query)}",
                                      [("accept", "application/x-ndjson")])  # fmt: skip
            if response.status_code != 200:
                body = await _body(tls, conn)
                raise TapClientError(
                    refusal(body, response.status_code, "the tap"), response.status_code
                )
            await _lines(tls, conn, on_line)
        except trio.TooSlowError:
            raise TapClientError(f"the tap API at {where} did not answer in time") from None
        except (trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise TapClientError(f"the connection to {where} broke: {exc}") from exc


class Answer(NamedTuple):
    """One whole answer of the API: status, content type, body and every header (names
    in lower case)."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


async def get(
    address: tuple[str, int],
    *,
    identity: SpiffeId,
    bundle: TrustBundle,
    token: str | None,
    target: str,
    max_body: int = MAX_BODY,
) -> Answer:
    """``GET target`` (path and query) of the API at ``address``, as :func:`tap` asks:
    the answer whole, whatever its status (the caller bounds the time). Raises
    :class:`TapClientError` when there is no answer."""
    where = f"{address[0]}:{address[1]}"
    async with await _connect(address, bundle, where) as tls:
        conn = h11.Connection(h11.CLIENT)
        try:
            response = await _ask(tls, conn, identity, where, token, target, [])
            body = bytearray()
            while isinstance(event := await _next(tls, conn), h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise TapClientError(f"an answer of more than {max_body} bytes")
        except (trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise TapClientError(f"the connection to {where} broke: {exc}") from exc
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers}
    content_type = headers.get("content-type", "application/octet-stream")
    return Answer(response.status_code, content_type, bytes(body), headers)


async def _connect(
    address: tuple[str, int], bundle: TrustBundle, where: str
) -> trio.SSLStream[trio.SocketStream]:
    """A TLS stream to the API at ``address``, trusting ``bundle`` (not yet handshaken)."""
    try:
        tcp = await trio.open_tcp_stream(*address)
    except OSError as exc:
        raise TapClientError(
            f"cannot connect to the control plane's API at {where}: {exc.strerror or exc}"
            " (is the cluster up? 'ambit get components')"
        ) from exc
    ctx = bootstrap_client_context(bundle)
    ctx.set_alpn_protocols(["http/1.1"])
    return trio.SSLStream(tcp, ctx, server_hostname=None)


async def _ask(
    tls: trio.SSLStream[trio.SocketStream],
    conn: h11.Connection,
    identity: SpiffeId,
    where: str,
    token: str | None,
    target: str,
    headers: list[tuple[str, str]],
) -> h11.Response:
    """Handshake (the server must be ``identity``), send ``GET target`` with the bearer
    ``token``, and read the answer's head."""
    await _handshake(tls, identity, where)
    sent = [("host", where), *headers]
    if token is not None:
        sent.append(("authorization", f"Bearer {token}"))
    request = h11.Request(method="GET", target=target, headers=sent)
    await tls.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    response = await _next(tls, conn)
    if not isinstance(response, h11.Response):
        raise TapClientError(f"{where} did not answer with HTTP")
    return response


async def _handshake(
    tls: trio.SSLStream[trio.SocketStream], identity: SpiffeId, where: str
) -> None:
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise TapClientError(
                f"{where} is not signed by the cluster's trust bundle ({cause.verify_message})"
            ) from exc
        raise TapClientError(f"TLS handshake with {where} failed: {cause or exc}") from exc
    try:
        verify_peer(
            tls.getpeercert(binary_form=True),
            trust_domain=identity.trust_domain,
            expected=frozenset({identity}),
        )
    except PeerVerificationError as exc:
        raise TapClientError(f"{where} is not the control plane: {exc}") from exc


async def _next(tls: trio.SSLStream[trio.SocketStream], conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(bytes(await tls.receive_some(64 * 1024)))


async def _body(tls: trio.SSLStream[trio.SocketStream], conn: h11.Connection) -> bytes:
    body = bytearray()
    with trio.move_on_after(CONNECT_TIMEOUT):
        while isinstance(event := await _next(tls, conn), h11.Data):
            body += event.data
            if len(body) > MAX_LINE:
                break
    return bytes(body)


def refusal(body: bytes, status: int, what: str = "the request") -> str:
    """The server's refusal of ``what`` in words, from its JSON error body."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    words = error if isinstance(error, str) else body.decode(errors="replace").strip()
    return f"the control plane refused {what} ({status}): {words}"


async def _lines(
    tls: trio.SSLStream[trio.SocketStream],
    conn: h11.Connection,
    on_line: Callable[[dict[str, Any]], bool],
) -> None:
    pending = bytearray()
    while isinstance(event := await _next(tls, conn), h11.Data):
        pending += event.data
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        if len(pending) > MAX_LINE:
            raise TapClientError(f"a line of more than {MAX_LINE} bytes")
        for line in lines:
            if line.strip() and not on_line(json.loads(line)):
                return
