"""What TLS needs of a workload's certificate, held as PEM: no ``cryptography`` here.

:class:`~mesh.identity.WorkloadCertificate` keeps parsed objects (``cryptography``'s keys
and certificates: what the CA and a ztunnel, which issue and check many, work with).
Loading ``cryptography`` costs a process about 8 MB of resident memory (its Rust
library, with OpenSSL inside, measured 2026-12-07) that a proxy presenting one
certificate never needs after it got it. So the waypoint gets its certificate from a
short-lived helper process (:mod:`mesh.issuer_process`, as Istio's pilot-agent does
the CSR for Envoy) and keeps only a :class:`Credential`; OpenSSL, through Python's
``ssl``, checks what is loaded (:class:`PemBundle`) and verifies peers
(:func:`mesh.identity.check_peer_uris`).

:class:`Presentable` is what :mod:`mesh.tls` builds contexts from; both kinds are one.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from typing import Protocol

from mesh.identity import IdentityError, SpiffeId, half_life


class HasPem(Protocol):
    def pem(self) -> bytes: ...


class Presentable(Protocol):
    """A certificate a TLS context can present: its chain and key as PEM, and the roots
    it trusts (:class:`~mesh.identity.WorkloadCertificate` and :class:`Credential`)."""

    @property
    def identity(self) -> SpiffeId: ...
    @property
    def bundle(self) -> HasPem: ...
    def chain_pem(self) -> bytes: ...
    def key_pem(self) -> bytes: ...


@dataclass(frozen=True)
class PemBundle:
    """Trusted roots as PEM, checked by OpenSSL when made: at least one certificate."""

    data: bytes

    def __post_init__(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=self.data.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise IdentityError(f"not a PEM certificate list: {exc}") from exc
        if not context.cert_store_stats()["x509"]:
            raise IdentityError("a trust bundle needs at least one root certificate")

    def pem(self) -> bytes:
        return self.data


@dataclass(frozen=True, eq=False)
class Credential:
    """A certificate chain (leaf first), its private key and the trust bundle, as PEM,
    with what renewal needs to know of the leaf. Made by whoever checked the chain
    (:mod:`mesh.issuer_process`'s helper checks it as :mod:`mesh.certs` does)."""

    identity: SpiffeId
    pem_chain: bytes
    pem_key: bytes
    bundle: PemBundle
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int

    def chain_pem(self) -> bytes:
        return self.pem_chain

    def key_pem(self) -> bytes:
        return self.pem_key

    def renew_at(self) -> dt.datetime:
        return half_life(self.not_before, self.not_after)
