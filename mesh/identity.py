"""Workload identity: SPIFFE ids, trust bundles, workload certificates, and the
check of a TLS peer's certificate that Python's ssl module does not do.

A SPIFFE id here is always ``spiffe://<trust-domain>/ns/<namespace>/sa/<sa>``.
Istio writes the same identity as a *principal* without the scheme,
``<trust-domain>/ns/<namespace>/sa/<sa>``; both forms parse.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh.constants import (
    CONTROL_PLANE_SERVICE_ACCOUNT,
    DEFAULT_TRUST_DOMAIN,
    SYSTEM_NAMESPACE,
    ZTUNNEL_SERVICE_ACCOUNT,
)

_SCHEME = "spiffe://"
# Trust domains are DNS-like names (SPIFFE spec: lowercase letters, digits, '.', '-', '_').
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
# Namespace and service-account names are Kubernetes DNS labels / subdomains.
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")

if TYPE_CHECKING:  # cryptography is imported where it is used: a proxy that only presents
    # a certificate it was handed (the waypoint, :mod:`mesh.issuer_process`) never loads it
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class IdentityError(ValueError):
    """An identity, certificate or bundle is malformed."""


class PeerVerificationError(Exception):
    """A TLS peer's certificate does not prove an acceptable identity.

    ``rule`` names the check that failed (``no-certificate``, ``chain``,
    ``expired``, ``uri-san-count``, ``not-spiffe``, ``trust-domain``,
    ``unexpected-identity``), so logs and tests can tell them apart.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} (rule: {rule})")
        self.rule = rule


@dataclass(frozen=True, order=True)
class SpiffeId:
    """``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN_RE.match(self.trust_domain):
            raise IdentityError(
                f"trust domain {self.trust_domain!r} must be lowercase letters, digits, '.', '-'"
                " or '_'"
            )
        for what, value in (
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not _NAME_RE.match(value) or len(value) > 253:
                raise IdentityError(
                    f"{what} {value!r} is not a Kubernetes name (lowercase letters, digits,"
                    " '-' and '.', starting and ending with a letter or digit)"
                )

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://td/ns/NS/sa/SA``; raise :class:`IdentityError` saying what is wrong."""
        if not isinstance(text, str):
            raise IdentityError(f"a SPIFFE id is a string, not {type(text).__name__}")
        if not text.startswith(_SCHEME):
            raise IdentityError(f"{text!r} is not a SPIFFE id: it must start with 'spiffe://'")
        return cls._from_path(text[len(_SCHEME) :], text)

    @classmethod
    def from_principal(cls, principal: str) -> SpiffeId:
        """Parse Istio's principal form ``td/ns/NS/sa/SA`` (a full SPIFFE id is accepted too)."""
        if principal.startswith(_SCHEME):
            return cls.parse(principal)
        return cls._from_path(principal, principal)

    @classmethod
    def _from_path(cls, rest: str, original: str) -> SpiffeId:
        if any(c in rest for c in "?#"):
            raise IdentityError(f"{original!r}: a SPIFFE id has no query or fragment")
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise IdentityError(
                f"{original!r} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<sa>"
            )
        trust_domain, _, namespace, _, service_account = parts
        if not trust_domain:
            raise IdentityError(f"{original!r} has an empty trust domain")
        return cls(trust_domain, namespace, service_account)

    @property
    def principal(self) -> str:
        """Istio's principal form, as written in AuthorizationPolicy."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return _SCHEME + self.principal


def _pem_certs(data: bytes | str) -> list[x509.Certificate]:
    from cryptography import x509

    raw = data.encode() if isinstance(data, str) else data
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise IdentityError(f"not a PEM certificate list: {exc}") from exc
    return certs


def certs_to_pem(certs: Iterable[x509.Certificate]) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class TrustBundle:
    """The root certificates a workload trusts. Several roots overlap during rotation."""

    roots: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise IdentityError("a trust bundle needs at least one root certificate")

    @classmethod
    def from_pem(cls, data: bytes | str) -> TrustBundle:
        return cls(tuple(_pem_certs(data)))

    def pem(self) -> bytes:
        return certs_to_pem(self.roots)

    def merged(self, other: TrustBundle) -> TrustBundle:
        """This bundle plus any root of ``other`` not already in it (rotation overlap)."""
        from cryptography.hazmat.primitives import hashes

        seen = {c.fingerprint(hashes.SHA256()) for c in self.roots}
        extra = tuple(c for c in other.roots if c.fingerprint(hashes.SHA256()) not in seen)
        return TrustBundle(self.roots + extra)


def uri_sans(cert: x509.Certificate) -> list[str]:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    san = ext.value
    assert isinstance(san, x509.SubjectAlternativeName)
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def identity_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE id a certificate proves: exactly one URI SAN, a SPIFFE id."""
    return spiffe_of_uris(uri_sans(cert))


def spiffe_of_uris(uris: list[str]) -> SpiffeId:
    """The SPIFFE id of a certificate with these URI SANs: exactly one, a SPIFFE id."""
    if len(uris) != 1:
        raise PeerVerificationError(
            "uri-san-count", f"certificate has {len(uris)} URI SANs; exactly one is required"
        )
    try:
        return SpiffeId.parse(uris[0])
    except IdentityError as exc:
        raise PeerVerificationError("not-spiffe", str(exc)) from exc


def verify_peer(
    leaf_der: bytes | None,
    *,
    trust_domain: str,
    expected: frozenset[SpiffeId] | None = None,
) -> SpiffeId:
    """Check the identity in a peer's leaf certificate (DER) after a TLS handshake.

    The chain to the trust bundle and the validity period were checked by
    OpenSSL during the handshake; this adds what it cannot: exactly one SPIFFE
    URI SAN, our trust domain, and (client side) one of the expected identities.
    """
    if not leaf_der:
        raise PeerVerificationError("no-certificate", "peer presented no certificate")
    from cryptography import x509

    return check_peer_uris(
        uri_sans(x509.load_der_x509_certificate(leaf_der)),
        trust_domain=trust_domain,
        expected=expected,
    )


def check_peer_uris(
    uris: list[str], *, trust_domain: str, expected: frozenset[SpiffeId] | None = None
) -> SpiffeId:
    """:func:`verify_peer` on the URI SANs of a certificate OpenSSL verified (as
    ``SSLObject.getpeercert()`` lists them): no certificate parsing of our own."""
    peer = spiffe_of_uris(uris)
    if peer.trust_domain != trust_domain:
        raise PeerVerificationError(
            "trust-domain",
            f"peer {peer} is in trust domain {peer.trust_domain!r}, not {trust_domain!r}",
        )
    if expected is not None and peer not in expected:
        wanted = ", ".join(sorted(str(e) for e in expected))
        raise PeerVerificationError(
            "unexpected-identity", f"peer is {peer}, expected one of: {wanted}"
        )
    return peer


@dataclass(frozen=True, eq=False)
class WorkloadCertificate:
    """A private key, its certificate chain (leaf first) and the trust bundle.

    The key was generated in this process and never leaves it.
    """

    identity: SpiffeId
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    bundle: TrustBundle

    def __post_init__(self) -> None:
        if not self.chain:
            raise IdentityError("a workload certificate needs at least its leaf")
        leaf_identity = identity_of(self.chain[0])
        if leaf_identity != self.identity:
            raise IdentityError(f"leaf certificate is for {leaf_identity}, not {self.identity}")

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    def chain_pem(self) -> bytes:
        return certs_to_pem(self.chain)

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def renew_at(self) -> dt.datetime:
        return half_life(self.not_before, self.not_after)


def half_life(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """When a fresh certificate should be requested: half its validity gone."""
    return not_before + (not_after - not_before) / 2


def chain_from_pem(data: bytes | str) -> tuple[x509.Certificate, ...]:
    certs = _pem_certs(data)
    if not certs:
        raise IdentityError("empty certificate chain")
    return tuple(certs)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 key, the kind every workload certificate uses."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def build_csr(identity: SpiffeId, key: PrivateKey) -> bytes:
    """A PEM CSR asking for exactly ``identity`` as its one URI SAN."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
        critical=True,
    )
    hash_alg = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, hash_alg)
    return csr.public_bytes(serialization.Encoding.PEM)


def ztunnel_identity(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    """The identity every node's ztunnel holds for itself (config stream, CA)."""
    return SpiffeId(trust_domain, SYSTEM_NAMESPACE, ZTUNNEL_SERVICE_ACCOUNT)


def control_plane_identity(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    """The identity the control plane (CA and config stream) presents."""
    return SpiffeId(trust_domain, SYSTEM_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT)
