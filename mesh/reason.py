"""Why a connection or request was refused or failed, as one typed value.

A :class:`Reason` is set where the decision is made (policy evaluation, the
STRICT check, the dial to the app, the TLS handshake...). Everything an
operator sees is derived from it, never guessed from a message:

- the Istio response flag of the metrics (:attr:`Reason.flag`): Istio's
  ztunnel reports ``DENY`` for a policy or STRICT refusal and ``CONNECT`` for
  any failure to connect (``src/proxy/metrics.rs``);
- the access log's ``reason`` key (:attr:`Reason.value`, a stable code);
- the HBONE status code of a refused CONNECT (:attr:`Reason.status`) and the
  ``ambit-reason`` header carrying the code, so the source side learns the
  destination's reason as a value. The header carries only the code: policy
  names and principals stay in the destination's own log.

| reason | code | flag | HBONE status |
| --- | --- | --- | --- |
| policy denied | ``policy_denied`` | DENY | 403 |
| STRICT refused plaintext | ``strict_plaintext`` | DENY | 403 |
| destination refused (RST) | ``destination_refused`` | CONNECT | 503 |
| destination unreachable | ``destination_unreachable`` | CONNECT | 503 |
| no healthy endpoint | ``no_healthy_endpoint`` | CONNECT | 503 |
| timeout | ``timeout`` | CONNECT | 504 |
| peer identity mismatch | ``identity_mismatch`` | CONNECT | 503 |
| no certificate | ``no_certificate`` | CONNECT | 503 |
| TLS handshake failed | ``tls_failed`` | CONNECT | 503 |
| malformed request | ``bad_request`` | CONNECT | 400 |
| protocol error | ``protocol_error`` | CONNECT | 502 |
| broken mid-stream | ``connection_reset`` | CONNECT | 502 |
| internal error | ``internal_error`` | CONNECT | 500 |
| caller not authenticated | ``unauthenticated`` | DENY | 401 |
| caller not authorized | ``not_authorized`` | DENY | 403 |
| cut at a drain's deadline | ``drain_deadline`` | CONNECT | 503 |
| shed at a pending or half-closed limit | ``overloaded`` | CONNECT | 503 |
| a service the decision needs did not answer | ``unavailable`` | CONNECT | 503 |

``overloaded`` is ztunnel shedding load (:mod:`mesh.pending`): the source, or
every source together, has too many connections waiting for their destination,
or too many half-closed ones. It says what ztunnel would not hold, not what the
destination answered. ``unavailable`` is a decision that could not be made: the control
plane could not ask the API server's TokenReview who a proxy's token belongs to.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import Final

from mesh.response_flags import ResponseFlag

# The flags ztunnel reports, from the one enum of response flags (mesh.response_flags).
FLAG_NONE: Final = ResponseFlag.NONE.value
FLAG_DENY: Final = ResponseFlag.DENY.value
FLAG_CONNECT: Final = ResponseFlag.CONNECT.value

REASON_HEADER: Final = "ambit-reason"


class Reason(enum.Enum):
    POLICY_DENIED = "policy_denied"
    STRICT_PLAINTEXT = "strict_plaintext"
    DESTINATION_REFUSED = "destination_refused"
    DESTINATION_UNREACHABLE = "destination_unreachable"
    NO_HEALTHY_ENDPOINT = "no_healthy_endpoint"
    TIMEOUT = "timeout"
    IDENTITY_MISMATCH = "identity_mismatch"
    NO_CERTIFICATE = "no_certificate"
    TLS_FAILED = "tls_failed"
    BAD_REQUEST = "bad_request"
    PROTOCOL_ERROR = "protocol_error"
    CONNECTION_RESET = "connection_reset"
    INTERNAL_ERROR = "internal_error"
    UNAUTHENTICATED = "unauthenticated"
    NOT_AUTHORIZED = "not_authorized"
    DRAIN_DEADLINE = "drain_deadline"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"

    @property
    def flag(self) -> str:
        """Istio's ztunnel response flag for a connection that ended for this reason."""
        return FLAG_DENY if self in _DENIALS else FLAG_CONNECT

    @property
    def status(self) -> int:
        """The HTTP status a refused HBONE CONNECT (or a local L7 reply) carries."""
        return _STATUS.get(self, 503)

    @classmethod
    def from_code(cls, code: str | None) -> Reason | None:
        """The reason a peer named in its ``ambit-reason`` header; None if absent or unknown."""
        if not code:
            return None
        try:
            return cls(code.strip())
        except ValueError:
            return None


_DENIALS: Final = frozenset(
    {Reason.POLICY_DENIED, Reason.STRICT_PLAINTEXT, Reason.UNAUTHENTICATED, Reason.NOT_AUTHORIZED}
)
_STATUS: Final = {
    Reason.POLICY_DENIED: 403,
    Reason.STRICT_PLAINTEXT: 403,
    Reason.TIMEOUT: 504,
    Reason.BAD_REQUEST: 400,
    Reason.PROTOCOL_ERROR: 502,
    Reason.CONNECTION_RESET: 502,
    Reason.INTERNAL_ERROR: 500,
    Reason.UNAUTHENTICATED: 401,
    Reason.NOT_AUTHORIZED: 403,
}

# verify_peer's and the TLS handshake's rule names (mesh.identity, mesh.tls) -> reason.
_RULES: Final = {
    "no-certificate": Reason.NO_CERTIFICATE,
    "unexpected-identity": Reason.IDENTITY_MISMATCH,
    "trust-domain": Reason.IDENTITY_MISMATCH,
    "not-spiffe": Reason.IDENTITY_MISMATCH,
    "uri-san-count": Reason.IDENTITY_MISMATCH,
    "timeout": Reason.TIMEOUT,
}


def reason_for_rule(rule: str) -> Reason:
    """The reason of a TLS or peer-verification failure named by its rule."""
    return _RULES.get(rule, Reason.TLS_FAILED)


def reason_for_dial_error(exc: OSError | TimeoutError) -> Reason:
    """The reason a dial failed, from its errno (never from its message)."""
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return Reason.TIMEOUT
    if exc.errno == errno.ECONNREFUSED:
        return Reason.DESTINATION_REFUSED
    return Reason.DESTINATION_UNREACHABLE


@dataclass(frozen=True)
class Failure:
    """A reason with the local detail behind it (which policy, which errno...)."""

    reason: Reason
    detail: str
