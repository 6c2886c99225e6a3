"""The X.509 certificates the CA makes, as pure functions of keys, names and times.

A CA certificate (root or intermediate) is ECDSA P-256 with keyCertSign and
cRLSign. A workload leaf has an empty subject and exactly one URI SAN (the
SPIFFE id, critical as RFC 5280 asks when the subject is empty), ``CA:FALSE``,
digitalSignature + keyEncipherment and serverAuth + clientAuth, like Istio's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.csr import CertifiablePublicKey
from ca.errors import CaFileError
from mesh.identity import SpiffeId

# A new CA certificate is valid from a little before now, for peers whose clocks lag.
_CA_BACKDATE = dt.timedelta(hours=1)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, as operators compare it with ``openssl x509 -fingerprint``."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey  # ambit makes ECDSA keys;
# an operator's plug-in CA (Istio's ``cacerts``) is often RSA


@dataclass(frozen=True)
class CaKeyPair:
    """A CA certificate and its private key (checked to belong together)."""

    cert: x509.Certificate
    key: CaPrivateKey

    def __post_init__(self) -> None:
        if _spki(self.cert.public_key()) != _spki(self.key.public_key()):
            raise CaFileError(
                "the key does not belong to the CA certificate"
                f" {self.cert.subject.rfc4514_string()}; restore the matching pair from backup"
            )


def check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """Raise :class:`CaFileError` unless ``issuer`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CaFileError(
            f"{what} ({cert.subject.rfc4514_string()}) was not issued by"
            f" {issuer.subject.rfc4514_string()} ({exc or type(exc).__name__});"
            " restore matching files from backup"
        ) from exc


def _key_usage(*, leaf: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=leaf,
        content_commitment=False,
        key_encipherment=leaf,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not leaf,
        crl_sign=not leaf,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(
    common_name: str,
    trust_domain: str,
    lifetime: dt.timedelta,
    *,
    issuer: CaKeyPair | None = None,
    path_length: int | None = None,
) -> CaKeyPair:
    """A fresh key and its CA certificate: self-signed without ``issuer`` (a root)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # A random suffix keeps subjects of successive roots apart during a rotation overlap.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {secrets.token_hex(4)}"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CA_BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(leaf=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return CaKeyPair(cert, key)


def workload_leaf(
    identity: SpiffeId,
    public_key: CertifiablePublicKey,
    issuer: CaKeyPair,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A workload certificate for ``identity`` signed by ``issuer``."""
    return _leaf(
        x509.Name([]),  # the identity lives in the SAN, as in Istio
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        public_key, issuer, not_before, not_after,
    )  # fmt: skip


def server_leaf(
    ips: list[str],
    public_key: CertifiablePublicKey,
    issuer: CaKeyPair,
    *,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    """A TLS server certificate for ``ips`` (IP SANs), signed by ``issuer``: for a server
    that is reached by address rather than by SPIFFE identity (local mode's stand-in API
    server, which the CNI plugin checks as a kubelet's client checks an API server)."""
    now = dt.datetime.now(dt.UTC)
    return _leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ips[0])]),
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]),
        [ExtendedKeyUsageOID.SERVER_AUTH],
        public_key, issuer, now - _CA_BACKDATE, now + lifetime,
    )  # fmt: skip


def _leaf(
    subject: x509.Name,
    names: x509.SubjectAlternativeName,
    usages: list[x509.ObjectIdentifier],
    public_key: CertifiablePublicKey,
    issuer: CaKeyPair,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A leaf (``CA:FALSE``) for ``names`` signed by ``issuer``; the SAN is critical when
    the subject is empty (RFC 5280)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(leaf=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(names, critical=len(subject) == 0)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
