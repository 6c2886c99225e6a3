"""The signing API, sans-IO: HTTP/2 bytes in, bytes out, no sockets.

:class:`CertificateApi` answers one request (``POST /v1/certificates``) from
the request alone and the authority, authenticator and authorizer it was
given. :class:`H2ServerProtocol` drives ``h2`` for one connection and hands
complete requests to the API. :mod:`ca.service` adds the Trio loop.

Every non-200 answer is ``{"error": "<code>", "message": "<why>"}``:

=====  ==============================================================
401    ``unauthenticated`` (no, malformed or unknown bearer token)
403    ``not-authorized`` (the authorizer said no for that identity)
400    ``bad-json``, ``bad-ttl``, or a CSR refusal reason of :mod:`ca.csr`
404    ``not-found``; 405 ``method-not-allowed``; 413 ``body-too-large``
500    ``internal-error`` (logged with its traceback)
=====  ==============================================================
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import structlog
from cryptography.hazmat.primitives import serialization

from ca.auth import Authenticator, Authorizer
from ca.authority import CertificateAuthority
from ca.csr import CsrRejected
from mesh.ca_client import CERTIFICATES_PATH

log = structlog.get_logger("ca.api")

MAX_BODY_BYTES: Final = 64 * 1024

EVENT_REQUEST_REFUSED: Final = "certificate_request_refused"
EVENT_REQUEST_FAILED: Final = "certificate_request_failed"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes
    src: str


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: dict[str, Any], **headers: str) -> Response:
    return Response(status, json.dumps(payload).encode(), tuple(headers.items()))


class CertificateApi:
    """``POST /v1/certificates``: authenticate, check the CSR, authorize, sign."""

    def __init__(
        self,
        authority: CertificateAuthority,
        authenticator: Authenticator,
        authorizer: Authorizer,
    ) -> None:
        self._authority = authority
        self._authenticator = authenticator
        self._authorizer = authorizer

    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except Exception:
            log.exception(EVENT_REQUEST_FAILED, src=request.src, path=request.path)
            return json_response(
                500, {"error": "internal-error", "message": "the CA failed; see its logs"}
            )

    def _refuse(
        self, request: Request, status: int, code: str, message: str, caller: str | None = None
    ) -> Response:
        log.info(
            EVENT_REQUEST_REFUSED,
            src=request.src,
            caller=caller,
            status=status,
            reason=code,
            detail=message,
        )
        headers = {"allow": "POST"} if status == 405 else {}
        return json_response(status, {"error": code, "message": message}, **headers)

    def _handle(self, request: Request) -> Response:
        if request.path != CERTIFICATES_PATH:
            return self._refuse(
                request,
                404,
                "not-found",
                f"no such path {request.path!r}; the CA serves POST {CERTIFICATES_PATH}",
            )
        if request.method != "POST":
            return self._refuse(
                request,
                405,
                "method-not-allowed",
                f"{request.method} is not allowed on {CERTIFICATES_PATH}; use POST",
            )
        caller, why = self._authenticate(request.authorization)
        if caller is None:
            return self._refuse(request, 401, "unauthenticated", why)
        parsed = _parse_body(request.body)
        if isinstance(parsed, tuple):
            code, message = parsed
            return self._refuse(request, 400, code, message, caller)
        csr_pem, ttl_seconds = parsed.csr, parsed.ttl_seconds
        try:
            csr = self._authority.inspect(csr_pem)
        except CsrRejected as exc:
            return self._refuse(request, 400, exc.reason, exc.message, caller)
        if not self._authorizer.may_issue(caller, csr.identity):
            return self._refuse(
                request,
                403,
                "not-authorized",
                f"caller {caller!r} may not have certificates for {csr.identity}",
                caller,
            )
        issued = self._authority.sign(csr, caller=caller, ttl_seconds=ttl_seconds)
        pem = serialization.Encoding.PEM
        return json_response(
            200,
            {
                "certificate_chain": [c.public_bytes(pem).decode() for c in issued.chain],
                "trust_bundle": [c.public_bytes(pem).decode() for c in issued.bundle.roots],
            },
        )

    def _authenticate(self, header: str | None) -> tuple[str | None, str]:
        if not header:
            return None, "no authorization header; send 'authorization: Bearer <token>'"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "the authorization header must be 'Bearer <token>'"
        caller = self._authenticator.caller_for(token.strip())
        if caller is None:
            return None, "unknown bearer token; check the token this client was given"
        return caller, ""


@dataclass(frozen=True)
class _Body:
    csr: str
    ttl_seconds: int | None


def _parse_body(body: bytes) -> _Body | tuple[str, str]:
    """The request body, or (error code, message) saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return "bad-json", f"the body is not JSON ({exc}); send {{'csr': '<PEM>'}}"
    if not isinstance(data, dict):
        return "bad-json", "the body must be a JSON object with a 'csr' field"
    csr = data.get("csr")
    if not isinstance(csr, str) or not csr:
        return "bad-json", "the 'csr' field is missing or not a string of PEM"
    ttl = data.get("ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        return "bad-ttl", f"'ttl_seconds' must be a positive integer, not {ttl!r}"
    return _Body(csr, ttl)


@dataclass
class _Incoming:
    headers: dict[bytes, bytes]
    body: bytearray = field(default_factory=bytearray)


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class H2ServerProtocol:
    """One HTTP/2 server connection as a state machine: feed bytes, send what it returns.

    After :meth:`receive`, :attr:`closed` says the connection is over and
    :attr:`error` (if set) says why, for the log.
    """

    def __init__(self, handler: Callable[[Request], Response], *, src: str) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._conn = h2.connection.H2Connection(config=config)
        self._handler = handler
        self._src = src
        self._incoming: dict[int, _Incoming] = {}
        self._outgoing: dict[int, bytes] = {}
        self._cut_short: set[int] = set()
        self.closed = False
        self.error: str | None = None

    def initiate(self) -> bytes:
        self._conn.initiate_connection()
        return self._conn.data_to_send()

    def receive(self, data: bytes | bytearray) -> bytes:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.closed = True
            self.error = f"HTTP/2 protocol error: {type(exc).__name__}: {exc}"
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return self._conn.data_to_send()  # GOAWAY, before the loop closes the socket
        for event in events:
            self._on_event(event)
        self._flush()
        return self._conn.data_to_send()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {_to_bytes(k).lower(): _to_bytes(v) for k, v in event.headers}
            self._incoming[event.stream_id] = _Incoming(headers)
        elif isinstance(event, h2.events.DataReceived):
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            incoming = self._incoming.get(event.stream_id)
            if incoming is None:
                return
            incoming.body += event.data
            if len(incoming.body) > MAX_BODY_BYTES:
                del self._incoming[event.stream_id]
                self._cut_short.add(event.stream_id)
                message = f"the body exceeds {MAX_BODY_BYTES} bytes; a CSR is about 1 KiB"
                payload = {"error": "body-too-large", "message": message}
                self._respond(event.stream_id, json_response(413, payload))
        elif isinstance(event, h2.events.StreamEnded):
            incoming = self._incoming.pop(event.stream_id, None)
            if incoming is not None:
                self._respond(event.stream_id, self._handler(self._request(incoming)))
        elif isinstance(event, h2.events.StreamReset):
            self._incoming.pop(event.stream_id, None)
            self._outgoing.pop(event.stream_id, None)
            self._cut_short.discard(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def _request(self, incoming: _Incoming) -> Request:
        h = incoming.headers
        auth = h.get(b"authorization")
        return Request(
            method=h.get(b":method", b"").decode("latin-1"),
            path=h.get(b":path", b"").decode("latin-1").partition("?")[0],
            authorization=auth.decode("latin-1") if auth is not None else None,
            body=bytes(incoming.body),
            src=self._src,
        )

    def _respond(self, stream_id: int, response: Response) -> None:
        headers = [
            (":status", str(response.status)),
            ("content-type", "application/json"),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        self._conn.send_headers(stream_id, headers)
        self._outgoing[stream_id] = response.body

    def _flush(self) -> None:
        """Send queued bodies as far as the peer's flow-control windows allow."""
        for stream_id, data in list(self._outgoing.items()):
            while data:
                window = self._conn.local_flow_control_window(stream_id)
                size = min(window, self._conn.max_outbound_frame_size, len(data))
                if size <= 0:
                    break
                self._conn.send_data(stream_id, data[:size])
                data = data[size:]
            if data:
                self._outgoing[stream_id] = data
            else:
                del self._outgoing[stream_id]
                self._conn.end_stream(stream_id)
                if stream_id in self._cut_short:  # the client need not send the rest (413)
                    self._cut_short.discard(stream_id)
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        self._conn.reset_stream(stream_id)
