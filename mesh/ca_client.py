"""The client of the CA service (``ca.service``): ``POST /v1/certificates`` over
TLS + HTTP/2 with a bearer token, one connection per request, on our one
HTTP/2 engine (:class:`mesh.hbone.Http2Connection` over ``trio.SSLStream``).

This module owns the wire protocol as the client sees it, and the errors of
getting a certificate signed (:class:`CertificateRequestError` and its
subclasses), which every :class:`mesh.certs.Signer` raises.
"""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING, Any, Final

import trio
from h2.errors import ErrorCodes

from mesh.constants import CONTROL_PLANE_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN, SYSTEM_NAMESPACE
from mesh.hbone import HboneError, HboneSettings, Http2Connection
from mesh.hbone.stream import StreamReset
from mesh.hbone.transport import TRANSPORT_ERRORS, StreamTransport
from mesh.identity import (
    IdentityError,
    PeerVerificationError,
    SpiffeId,
    TrustBundle,
    chain_from_pem,
    verify_peer,
)
from mesh.tls import ALPN_H2, bootstrap_client_context
from mesh.tokens import Token, current

CERTIFICATES_PATH: Final = "/v1/certificates"  # the CA service's one endpoint
MAX_RESPONSE_BYTES: Final = 1024 * 1024
HTTP2_SETTINGS: Final = HboneSettings(
    stream_window=256 * 1024, connection_window=1024 * 1024, max_frame_size=16_384
)

if TYPE_CHECKING:
    from cryptography import x509

SignedChain = tuple[tuple["x509.Certificate", ...], TrustBundle]


class CertificateRequestError(Exception):
    """A certificate could not be obtained. ``reason`` is a stable code for logs and tests."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CaUnreachable(CertificateRequestError):
    """No answer from the CA: connection refused, reset, or too slow."""


class CaNotTrusted(CertificateRequestError):
    """The server's certificate does not prove it is the CA we expect."""


class CaRefused(CertificateRequestError):
    """The CA answered with an error; ``status`` and ``reason`` are its HTTP status and code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.status = status


class BadCaResponse(CertificateRequestError):
    """The CA's answer is malformed, or certifies something other than what was asked."""


class CaClient:
    """The CA service's client: ``POST /v1/certificates`` with a bearer token.

    It verifies the server against ``bundle`` and checks that it presents
    ``ca_identity`` (the control plane's, by default). Each answer carries the
    CA's current trust bundle; the client trusts that bundle from then on, so
    it follows a root rotation.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        token: Token,
        bundle: TrustBundle,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        ca_identity: SpiffeId | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.bundle = bundle
        self._token = token
        self._trust_domain = trust_domain
        self._ca_identity = ca_identity or SpiffeId(
            trust_domain, SYSTEM_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT
        )
        self._timeout = timeout
        self._context: tuple[TrustBundle, ssl.SSLContext] | None = None

    @property
    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    async def sign(self, csr_pem: bytes, ttl_seconds: int | None) -> SignedChain:
        body: dict[str, Any] = {"csr": csr_pem.decode()}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        try:
            with trio.fail_after(self._timeout):
                status, payload = await self._post(json.dumps(body).encode())
        except trio.TooSlowError:
            raise CaUnreachable(
                "timeout", f"the CA at {self._where} did not answer within {self._timeout}s"
            ) from None
        answer = _json_object(payload, self._where)
        if status != 200:
            raise CaRefused(
                status,
                str(answer.get("error", "unknown")),
                f"the CA refused ({status}): {answer.get('message', '(no message)')}",
            )
        try:
            chain = chain_from_pem("".join(answer["certificate_chain"]))
            bundle = TrustBundle.from_pem("".join(answer["trust_bundle"]))
        except (KeyError, TypeError, IdentityError) as exc:
            raise BadCaResponse(
                "bad-response", f"the CA at {self._where} sent no usable certificates: {exc}"
            ) from exc
        self.bundle = bundle
        return chain, bundle

    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None or self._context[0] is not self.bundle:
            self._context = (self.bundle, bootstrap_client_context(self.bundle))
        return self._context[1]

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        host, port = self.address
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise CaUnreachable(
                "unreachable",
                f"cannot connect to the CA at {self._where}: {exc.strerror or exc}"
                f" (is the control plane running, and is port {port} reachable?)",
            ) from exc
        tls = trio.SSLStream(tcp, self._ssl_context(), server_hostname=None)
        try:
            await self._handshake(tls)
            answer = await _exchange(tls, self._request_headers(len(body)), body, self._where)
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(tls)
            raise CaUnreachable(
                "connection-lost", f"the connection to the CA at {self._where} broke: {exc}"
            ) from exc
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        await tls.aclose()  # close_notify, so the CA sees a clean end, not a vanished peer
        return answer

    async def _handshake(self, tls: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise CaNotTrusted(
                    "chain",
                    f"the server at {self._where} is not signed by our trust bundle"
                    f" ({cause.verify_message}); is the bundle current?",
                ) from exc
            raise CaUnreachable(
                "tls-handshake", f"TLS handshake with the CA at {self._where} failed: {cause}"
            ) from exc
        try:
            verify_peer(
                tls.getpeercert(binary_form=True),
                trust_domain=self._trust_domain,
                expected=frozenset({self._ca_identity}),
            )
        except PeerVerificationError as exc:
            raise CaNotTrusted(
                exc.rule, f"the server at {self._where} is not the CA we expect: {exc}"
            ) from exc
        if tls.selected_alpn_protocol() != ALPN_H2:
            raise BadCaResponse(
                "wrong-alpn", f"the CA at {self._where} did not negotiate HTTP/2 (ALPN h2)"
            )

    def _request_headers(self, length: int) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", self._where),
            (":path", CERTIFICATES_PATH),
            ("content-type", "application/json"),
            ("content-length", str(length)),
            ("authorization", f"Bearer {current(self._token)}"),
        ]


def _json_object(payload: bytes, where: str) -> dict[str, Any]:
    try:
        answer = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadCaResponse("bad-response", f"the CA at {where} did not answer JSON") from exc
    if not isinstance(answer, dict):
        raise BadCaResponse("bad-response", f"the CA at {where} did not answer a JSON object")
    return answer


async def _exchange(
    tls: trio.SSLStream[trio.SocketStream],
    headers: list[tuple[str, str]],
    body: bytes,
    where: str,
) -> tuple[int, bytes]:
    """One HTTP/2 request (non-empty body) on a fresh connection of our one engine;
    the connection is closed (GOAWAY, close_notify) when the answer is in."""
    connection = Http2Connection(
        StreamTransport(tls), peer=None, settings=HTTP2_SETTINGS, client_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.serve)
        try:
            return await _request(connection, headers, body, where)
        except (HboneError, StreamReset, trio.BrokenResourceError) as exc:
            error = connection.error
            if error is not None and error.code == ErrorCodes.NO_ERROR:
                raise CaUnreachable(
                    "connection-lost", f"the CA at {where} closed without answering"
                ) from exc
            if error is not None and isinstance(error.__cause__, TRANSPORT_ERRORS):
                raise CaUnreachable(
                    "connection-lost", f"the connection to the CA at {where} broke: {error.reason}"
                ) from exc
            raise BadCaResponse(
                "protocol-error", f"the CA at {where} abandoned the request ({exc})"
            ) from exc
        finally:
            connection.close("request done")


async def _request(
    connection: Http2Connection, headers: list[tuple[str, str]], body: bytes, where: str
) -> tuple[int, bytes]:
    stream = connection.start_request(headers)
    await stream.send_all(body)
    await stream.send_eof()
    status = dict(await stream.wait_response()).get(":status", "")
    if not status.isdigit():
        raise BadCaResponse("bad-response", f"the CA at {where} sent no status")
    answer = bytearray()
    while data := await stream.receive_some():
        answer += data
        if len(answer) > MAX_RESPONSE_BYTES:
            raise BadCaResponse("bad-response", f"the CA at {where} answered too much")
    return int(status), bytes(answer)
