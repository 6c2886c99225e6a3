"""The signing API: a request in, a response out, and its HTTP/2 stream handler.

:class:`CertificateApi` answers one request (``POST /v1/certificates``) from
the request alone and the authority, authenticator and authorizer it was
given (sans-IO). :func:`api_stream_handler` reads a request from an HTTP/2
stream of our one engine (:mod:`mesh.hbone.connection`, the same as HBONE's)
and writes the answer; :mod:`ca.service` runs the engine over TLS.

Every non-200 answer is ``{"error": "<code>", "message": "<why>"}``:

=====  ==============================================================
401    ``unauthenticated`` (no, malformed, unknown or refused bearer token)
403    ``not-authorized`` (the authorizer said no for that identity, and why)
400    ``bad-json``, ``bad-ttl``, or a CSR refusal reason of :mod:`ca.csr`
404    ``not-found``; 405 ``method-not-allowed``; 413 ``body-too-large``
500    ``internal-error`` (logged with its traceback)
503    ``review-unavailable`` (the token could not be reviewed now: retry)
=====  ==============================================================
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog
from cryptography.hazmat.primitives import serialization
from h2.errors import ErrorCodes

from ca.auth import (
    Authenticator,
    Authorizer,
    NotAuthenticated,
    Reviewer,
    ReviewUnavailable,
    authenticate,
    refusal,
)
from ca.authority import CertificateAuthority
from ca.csr import CsrRejected
from mesh.ca_client import CERTIFICATES_PATH
from mesh.hbone.stream import H2Stream
from mesh.http import Request, Response, json_response

log = structlog.get_logger("ca.api")

MAX_BODY_BYTES: Final = 64 * 1024

EVENT_REQUEST_REFUSED: Final = "certificate_request_refused"
EVENT_REQUEST_FAILED: Final = "certificate_request_failed"


class CertificateApi:
    """``POST /v1/certificates``: authenticate, check the CSR, authorize, sign."""

    def __init__(
        self,
        authority: CertificateAuthority,
        authenticator: Authenticator | Reviewer,
        authorizer: Authorizer,
    ) -> None:
        self._authority = authority
        self._authenticator = authenticator
        self._authorizer = authorizer

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except Exception:
            log.exception(EVENT_REQUEST_FAILED, src=request.src, path=request.path)
            return json_response(
                {"error": "internal-error", "message": "the CA failed; see its logs"}, 500
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
        headers = (("allow", "POST"),) if status == 405 else ()
        return json_response({"error": code, "message": message}, status, headers=headers)

    async def _handle(self, request: Request) -> Response:
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
        try:
            caller = await self._authenticate(request.header("authorization"))
        except NotAuthenticated as exc:
            return self._refuse(request, 401, "unauthenticated", str(exc))
        except ReviewUnavailable as exc:
            return self._refuse(request, 503, "review-unavailable", str(exc))
        parsed = _parse_body(request.body)
        if isinstance(parsed, tuple):
            code, message = parsed
            return self._refuse(request, 400, code, message, caller)
        csr_pem, ttl_seconds = parsed.csr, parsed.ttl_seconds
        try:
            csr = self._authority.inspect(csr_pem)
        except CsrRejected as exc:
            return self._refuse(request, 400, exc.reason, exc.message, caller)
        why_not = refusal(self._authorizer, caller, csr.identity)
        if why_not is not None:
            return self._refuse(request, 403, "not-authorized", why_not, caller)
        issued = self._authority.sign(csr, caller=caller, ttl_seconds=ttl_seconds)
        pem = serialization.Encoding.PEM
        return json_response(
            {
                "certificate_chain": [c.public_bytes(pem).decode() for c in issued.chain],
                "trust_bundle": [c.public_bytes(pem).decode() for c in issued.bundle.roots],
            }
        )

    async def _authenticate(self, header: str | None) -> str:
        if not header:
            raise NotAuthenticated("no authorization header; send 'authorization: Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("the authorization header must be 'Bearer <token>'")
        return await authenticate(self._authenticator, token.strip())


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


def api_stream_handler(
    handler: Callable[[Request], Awaitable[Response]], *, src: str
) -> Callable[[H2Stream], Awaitable[None]]:
    """The handler an HTTP/2 connection (:class:`mesh.hbone.Http2Connection`) runs for
    each request stream: read the body (at most :data:`MAX_BODY_BYTES`), answer."""

    async def handle(stream: H2Stream) -> None:
        body = bytearray()
        while data := await stream.receive_some():
            body += data
            if len(body) > MAX_BODY_BYTES:
                message = f"the body exceeds {MAX_BODY_BYTES} bytes; a CSR is about 1 KiB"
                payload = {"error": "body-too-large", "message": message}
                await _respond(stream, json_response(payload, 413))
                if stream.accepts_data():  # the client need not send the rest
                    stream.connection.reset_stream(stream, ErrorCodes.NO_ERROR)
                return
        request = _request(stream.request_headers, bytes(body), src)
        await _respond(stream, await handler(request))

    return handle


def _request(headers: list[tuple[str, str]], body: bytes, src: str) -> Request:
    fields = {name.lower(): value for name, value in headers}
    return Request(
        method=fields.get(":method", ""),
        path=fields.get(":path", "").partition("?")[0],
        headers={k: v for k, v in fields.items() if not k.startswith(":")},
        body=body,
        src=src,
    )


async def _respond(stream: H2Stream, response: Response) -> None:
    stream.send_headers(
        [
            (":status", str(response.status)),
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
    )
    await stream.send_all(response.body)
    await stream.send_eof()
