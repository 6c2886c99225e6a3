"""Checking certificate signing requests before anything is signed.

:func:`inspect_csr` is pure: PEM in, a :class:`CsrRequest` (the one SPIFFE id
asked for and the public key to certify) out, or a :class:`CsrRejected`
subclass whose ``reason`` code says which rule the CSR broke. The service
returns that code to the caller; operators grep for it in the logs.

The order of the checks matters: nothing in a CSR is believed before its
signature is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from ca.errors import CaError
from mesh.identity import IdentityError, SpiffeId

MIN_RSA_BITS = 2048
ALLOWED_CURVES: frozenset[str] = frozenset({"secp256r1", "secp384r1"})
# Ed25519 keys are fixed-size and strong; build_csr can make them.
CertifiablePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class CsrRejected(CaError):
    """The CA refuses to sign a CSR. ``reason`` is a stable code for callers and logs."""

    reason = "csr-rejected"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedCsr(CsrRejected):
    reason = "malformed-csr"


class BadCsrSignature(CsrRejected):
    reason = "bad-signature"


class WeakKey(CsrRejected):
    reason = "weak-key"


class UnsupportedKeyType(CsrRejected):
    reason = "unsupported-key-type"


class CaRequested(CsrRejected):
    reason = "ca-requested"


class ForbiddenSan(CsrRejected):
    """The CSR asks for names besides its one SPIFFE URI (DNS, IP, email, a second URI...)."""

    reason = "forbidden-san"


class MissingIdentity(CsrRejected):
    reason = "missing-identity"


class InvalidIdentity(CsrRejected):
    reason = "invalid-identity"


class WrongTrustDomain(CsrRejected):
    reason = "wrong-trust-domain"


@dataclass(frozen=True)
class CsrRequest:
    """A CSR that passed every check: what to certify, and for whom."""

    identity: SpiffeId
    public_key: CertifiablePublicKey


def inspect_csr(csr_pem: bytes | str, *, trust_domain: str) -> CsrRequest:
    """Check a PEM CSR; return what it asks for or raise a :class:`CsrRejected`."""
    raw = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(raw)
    except ValueError as exc:
        raise MalformedCsr(
            f"not a PEM certificate signing request ({exc}); send the output of"
            " mesh.identity.build_csr"
        ) from exc
    # The key type first: a key we never accept (DSA, say) is refused by name, and its
    # signature is never checked with an algorithm cryptography deprecates.
    public_key = _check_key(csr)
    try:
        signature_ok = csr.is_signature_valid
    except Exception as exc:  # cryptography raises various types for odd algorithms
        raise BadCsrSignature(f"the CSR's signature cannot be checked: {exc}") from exc
    if not signature_ok:
        raise BadCsrSignature(
            "the CSR's signature does not match its contents: it was altered after signing,"
            " or signed with a different key than the one it carries"
        )
    try:
        extensions = csr.extensions
    except ValueError as exc:
        raise MalformedCsr(f"the CSR's extensions cannot be parsed: {exc}") from exc
    _check_not_ca(extensions)
    identity = _requested_identity(extensions)
    if identity.trust_domain != trust_domain:
        raise WrongTrustDomain(
            f"{identity} is in trust domain {identity.trust_domain!r}; this CA signs only"
            f" {trust_domain!r}"
        )
    return CsrRequest(identity=identity, public_key=public_key)


_DSA_SIGNATURES = frozenset(
    {
        SignatureAlgorithmOID.DSA_WITH_SHA1,
        SignatureAlgorithmOID.DSA_WITH_SHA224,
        SignatureAlgorithmOID.DSA_WITH_SHA256,
        SignatureAlgorithmOID.DSA_WITH_SHA384,
        SignatureAlgorithmOID.DSA_WITH_SHA512,
    }
)


def _check_key(csr: x509.CertificateSigningRequest) -> CertifiablePublicKey:
    if csr.signature_algorithm_oid in _DSA_SIGNATURES:
        # A CSR is signed by its own key, so this names a DSA key without loading it
        # (loading one makes cryptography warn that DSA is deprecated).
        raise UnsupportedKeyType(
            "DSA keys are not accepted; use ECDSA P-256, P-384, RSA >= 2048 or Ed25519"
        )
    try:
        key = csr.public_key()
    except ValueError as exc:
        raise UnsupportedKeyType(f"the CSR's public key cannot be loaded: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKey(
                f"RSA key of {key.key_size} bits is too weak; use at least {MIN_RSA_BITS} bits"
                " or an ECDSA P-256 key"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise WeakKey(
                f"EC curve {key.curve.name} is not accepted; use P-256 (secp256r1) or"
                " P-384 (secp384r1)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise UnsupportedKeyType(
        f"{type(key).__name__} keys are not accepted; use ECDSA P-256, P-384, RSA >= 2048"
        " or Ed25519"
    )


def _check_not_ca(extensions: x509.Extensions) -> None:
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    if constraints.ca:
        raise CaRequested(
            "the CSR asks to be a CA (basicConstraints CA:TRUE); workload certificates"
            " cannot sign other certificates"
        )


def _requested_identity(extensions: x509.Extensions) -> SpiffeId:
    try:
        san = extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        raise MissingIdentity(
            "the CSR has no subjectAltName; it must carry exactly one URI SAN, the SPIFFE id"
        ) from None
    assert isinstance(san, x509.SubjectAlternativeName)
    others = [name for name in san if not isinstance(name, x509.UniformResourceIdentifier)]
    if others:
        listed = ", ".join(_describe_name(name) for name in others)
        raise ForbiddenSan(
            f"the CSR asks for {listed}; only one URI SAN (the SPIFFE id) is allowed"
        )
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise MissingIdentity("the CSR's subjectAltName is empty; put the SPIFFE id in it")
    if len(uris) > 1:
        listed = ", ".join(repr(u) for u in uris)
        raise ForbiddenSan(
            f"the CSR asks for {len(uris)} URI SANs ({listed}); exactly one SPIFFE id is allowed"
        )
    try:
        return SpiffeId.parse(uris[0])
    except IdentityError as exc:
        raise InvalidIdentity(f"the CSR's URI SAN is not a workload SPIFFE id: {exc}") from exc


def _describe_name(name: x509.GeneralName) -> str:
    kinds: dict[type[x509.GeneralName], str] = {
        x509.DNSName: "DNS name",
        x509.IPAddress: "IP address",
        x509.RFC822Name: "email address",
        x509.DirectoryName: "directory name",
        x509.RegisteredID: "registered id",
        x509.OtherName: "other name",
    }
    return f"{kinds.get(type(name), type(name).__name__)} {name.value!r}"
