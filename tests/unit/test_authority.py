"""The CA without a network: what it refuses to sign, what it signs, its files, rotation."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ca import (
    CaConfig,
    CaFileError,
    CaStateError,
    CertificateAuthority,
    CsrRejected,
    InvalidTtl,
    KeyFilePermissionError,
)
from ca.csr import (
    BadCsrSignature,
    CaRequested,
    ForbiddenSan,
    InvalidIdentity,
    MalformedCsr,
    MissingIdentity,
    UnsupportedKeyType,
    WeakKey,
    WrongTrustDomain,
)
from mesh.identity import SpiffeId, TrustBundle, build_csr, generate_key, uri_sans

WEB = SpiffeId("cluster.local", "default", "web")
DAY = dt.timedelta(days=1)


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def csr_with(
    names: list[x509.GeneralName] | None,
    *,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey | None = None,
    ca: bool = False,
) -> bytes:
    """A CSR built by hand, to ask for what build_csr never would."""
    key = key or generate_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def verifies(chain: tuple[x509.Certificate, ...], bundle: TrustBundle) -> bool:
    verifier = PolicyBuilder().store(Store(list(bundle.roots))).build_client_verifier()
    try:
        verifier.verify(chain[0], list(chain[1:]))
    except VerificationError:
        return False
    return True


# -- refusals: each its own type and reason code ---------------------------------------


def refusal(ca: CertificateAuthority, csr_pem: bytes) -> CsrRejected:
    with pytest.raises(CsrRejected) as info:
        ca.sign_csr(csr_pem, caller="test")
    return info.value


def test_refuses_garbage(ca: CertificateAuthority) -> None:
    err = refusal(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n")
    assert isinstance(err, MalformedCsr)
    assert err.reason == "malformed-csr"


def test_refuses_csr_altered_after_signing(ca: CertificateAuthority) -> None:
    der = x509.load_pem_x509_csr(build_csr(WEB, generate_key())).public_bytes(
        serialization.Encoding.DER
    )
    assert b"/sa/web" in der
    altered = x509.load_der_x509_csr(der.replace(b"/sa/web", b"/sa/wex"))
    err = refusal(ca, altered.public_bytes(serialization.Encoding.PEM))
    assert isinstance(err, BadCsrSignature)
    assert err.reason == "bad-signature"
    assert "altered" in str(err)


def test_refuses_rsa_key_under_2048_bits(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    err = refusal(ca, build_csr(WEB, key))
    assert isinstance(err, WeakKey)
    assert err.reason == "weak-key"
    assert "RSA key of 1024 bits" in str(err)


@pytest.mark.parametrize("curve", [ec.SECP521R1(), ec.SECP256K1(), ec.SECP224R1()])
def test_refuses_ec_curves_other_than_p256_p384(
    ca: CertificateAuthority, curve: ec.EllipticCurve
) -> None:
    err = refusal(ca, build_csr(WEB, ec.generate_private_key(curve)))
    assert isinstance(err, WeakKey)
    assert f"EC curve {curve.name} is not accepted" in str(err)


def test_refuses_dsa_key(ca: CertificateAuthority) -> None:
    # cryptography deprecates DSA; the CA must still refuse a CSR signed with one.
    with pytest.warns(CryptographyDeprecationWarning, match="DSA is deprecated"):
        key = dsa.generate_private_key(key_size=2048)
    err = refusal(ca, csr_with([x509.UniformResourceIdentifier(str(WEB))], key=key))
    assert isinstance(err, UnsupportedKeyType)
    assert err.reason == "unsupported-key-type"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (x509.DNSName("web.default.svc"), "DNS name 'web.default.svc'"),
        (x509.IPAddress(ipaddress.ip_address("10.0.0.7")), "IP address"),
        (x509.RFC822Name("ops@example.com"), "email address 'ops@example.com'"),
    ],
    ids=["dns", "ip", "email"],
)
def test_refuses_sans_besides_the_spiffe_uri(
    ca: CertificateAuthority, extra: x509.GeneralName, says: str
) -> None:
    err = refusal(ca, csr_with([x509.UniformResourceIdentifier(str(WEB)), extra]))
    assert isinstance(err, ForbiddenSan)
    assert err.reason == "forbidden-san"
    assert says in str(err)


def test_refuses_two_uri_sans(ca: CertificateAuthority) -> None:
    other = "spiffe://cluster.local/ns/kube-system/sa/admin"
    uris: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(str(WEB)),
        x509.UniformResourceIdentifier(other),
    ]
    err = refusal(ca, csr_with(uris))
    assert isinstance(err, ForbiddenSan)
    assert "2 URI SANs" in str(err)


def test_refuses_a_ca_request(ca: CertificateAuthority) -> None:
    err = refusal(ca, csr_with([x509.UniformResourceIdentifier(str(WEB))], ca=True))
    assert isinstance(err, CaRequested)
    assert err.reason == "ca-requested"
    assert "CA:TRUE" in str(err)


def test_refuses_csr_without_san(ca: CertificateAuthority) -> None:
    err = refusal(ca, csr_with(None))
    assert isinstance(err, MissingIdentity)
    assert err.reason == "missing-identity"


def test_refuses_uri_that_is_not_a_workload_id(ca: CertificateAuthority) -> None:
    err = refusal(ca, csr_with([x509.UniformResourceIdentifier("https://cluster.local/web")]))
    assert isinstance(err, InvalidIdentity)
    assert err.reason == "invalid-identity"


def test_refuses_identity_outside_its_trust_domain(ca: CertificateAuthority) -> None:
    err = refusal(ca, build_csr(SpiffeId("evil.example", "default", "web"), generate_key()))
    assert isinstance(err, WrongTrustDomain)
    assert err.reason == "wrong-trust-domain"
    assert "'evil.example'" in str(err)
    assert "'cluster.local'" in str(err)


@pytest.mark.parametrize("ttl", [0, -5])
def test_refuses_non_positive_ttl(ca: CertificateAuthority, ttl: int) -> None:
    with pytest.raises(InvalidTtl, match="positive integer"):
        ca.sign_csr(build_csr(WEB, generate_key()), caller="test", ttl_seconds=ttl)


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
    ],
    ids=["rsa-2048", "p-384"],
)
def test_accepts_strong_keys(
    ca: CertificateAuthority, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> None:
    issued = ca.sign_csr(build_csr(WEB, key), caller="test")
    assert issued.leaf.public_key() == key.public_key()


# -- the issued leaf -------------------------------------------------------------------


def test_leaf_carries_exactly_the_requested_identity(ca: CertificateAuthority) -> None:
    leaf = ca.sign_csr(build_csr(WEB, generate_key()), caller="test").leaf
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(WEB))]
    assert uri_sans(leaf) == [str(WEB)]


def test_leaf_is_not_a_ca_and_has_workload_usages(ca: CertificateAuthority) -> None:
    leaf = ca.sign_csr(build_csr(WEB, generate_key()), caller="test").leaf
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign
    assert not usage.crl_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_leaf_lives_24h_by_default(ca: CertificateAuthority) -> None:
    before = dt.datetime.now(dt.UTC)
    leaf = ca.sign_csr(build_csr(WEB, generate_key()), caller="test").leaf
    assert abs(leaf.not_valid_after_utc - (before + DAY)) < dt.timedelta(seconds=5)
    assert leaf.not_valid_before_utc <= before


def test_leaf_honours_a_shorter_ttl(ca: CertificateAuthority) -> None:
    before = dt.datetime.now(dt.UTC)
    leaf = ca.sign_csr(build_csr(WEB, generate_key()), caller="t", ttl_seconds=3600).leaf
    assert abs(leaf.not_valid_after_utc - (before + dt.timedelta(hours=1))) < dt.timedelta(
        seconds=5
    )


def test_leaf_lifetime_is_capped_at_the_maximum() -> None:
    ca = CertificateAuthority.create(CaConfig(max_ttl_seconds=2 * 86400))
    before = dt.datetime.now(dt.UTC)
    leaf = ca.sign_csr(build_csr(WEB, generate_key()), caller="t", ttl_seconds=30 * 86400).leaf
    assert abs(leaf.not_valid_after_utc - (before + 2 * DAY)) < dt.timedelta(seconds=5)


def test_every_issuance_is_logged(ca: CertificateAuthority) -> None:
    with structlog.testing.capture_logs() as logs:
        leaf = ca.sign_csr(build_csr(WEB, generate_key()), caller="node-a").leaf
    [event] = [e for e in logs if e["event"] == "certificate_issued"]
    assert event["caller"] == "node-a"
    assert event["identity"] == str(WEB)
    assert event["serial"] == f"{leaf.serial_number:x}"
    assert event["not_after"] == leaf.not_valid_after_utc.isoformat()


def test_leaf_verifies_against_the_bundle(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(build_csr(WEB, generate_key()), caller="test")
    assert issued.chain == (issued.leaf,)
    assert verifies(issued.chain, ca.trust_bundle)
    assert not verifies(issued.chain, CertificateAuthority.create().trust_bundle)


def test_intermediate_chain_verifies() -> None:
    ca = CertificateAuthority.create(intermediate=True)
    issued = ca.sign_csr(build_csr(WEB, generate_key()), caller="test")
    assert ca.intermediate is not None
    assert issued.chain == (issued.leaf, ca.intermediate)
    assert issued.leaf.issuer == ca.intermediate.subject
    assert issued.bundle.roots == (ca.root,)
    assert verifies(issued.chain, issued.bundle)
    assert not verifies(issued.chain[:1], issued.bundle)  # the intermediate is needed


# -- files -----------------------------------------------------------------------------


def test_key_files_are_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)  # even a permissive umask must not widen the key's mode
    try:
        CertificateAuthority.create(intermediate=True, directory=tmp_path)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "root-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "root-cert.pem").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_refuses_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    CertificateAuthority.create(directory=tmp_path)
    key_path = tmp_path / "root-key.pem"
    key_path.chmod(mode)
    with pytest.raises(KeyFilePermissionError) as info:
        CertificateAuthority.load(tmp_path)
    assert f"chmod 600 {key_path}" in str(info.value)
    assert f"mode {mode:04o}" in str(info.value)


def test_load_after_create_gives_the_same_root(tmp_path: Path) -> None:
    created = CertificateAuthority.create(directory=tmp_path)
    loaded = CertificateAuthority.load(tmp_path)
    assert loaded.root == created.root
    issued = loaded.sign_csr(build_csr(WEB, generate_key()), caller="test")
    assert verifies(issued.chain, created.trust_bundle)


def test_load_or_create_creates_once(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca", intermediate=True)
    second = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert (second.root, second.intermediate) == (first.root, first.intermediate)


def test_create_refuses_to_overwrite_a_root(tmp_path: Path) -> None:
    CertificateAuthority.create(directory=tmp_path)
    with pytest.raises(CaFileError, match="already holds a CA root"):
        CertificateAuthority.create(directory=tmp_path)


def test_refuses_a_key_that_does_not_match_its_certificate(tmp_path: Path) -> None:
    CertificateAuthority.create(directory=tmp_path / "a")
    CertificateAuthority.create(directory=tmp_path / "b")
    (tmp_path / "a" / "root-cert.pem").write_bytes((tmp_path / "b" / "root-cert.pem").read_bytes())
    with pytest.raises(CaFileError, match="does not belong to the CA certificate"):
        CertificateAuthority.load(tmp_path / "a")


# -- rotation --------------------------------------------------------------------------


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-only", "intermediate"])
def test_root_rotation_overlap_then_retirement(intermediate: bool) -> None:
    ca = CertificateAuthority.create(intermediate=intermediate)
    old_root = ca.root
    old = ca.sign_csr(build_csr(WEB, generate_key()), caller="test")

    new_root = ca.rotate_root()
    new = ca.sign_csr(build_csr(WEB, generate_key()), caller="test")

    assert new_root != old_root
    assert list(ca.trust_bundle.roots) == [new_root, old_root]
    assert new.bundle == ca.trust_bundle
    assert verifies(old.chain, ca.trust_bundle)
    assert verifies(new.chain, ca.trust_bundle)
    assert not verifies(new.chain, old.bundle)  # the new root really signs now

    ca.retire_root(old_root)

    assert list(ca.trust_bundle.roots) == [new_root]
    assert not verifies(old.chain, ca.trust_bundle)
    assert verifies(new.chain, ca.trust_bundle)


def test_rotation_and_retirement_survive_a_restart(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(intermediate=True, directory=tmp_path)
    old_root = ca.root
    ca.rotate_root()
    assert CertificateAuthority.load(tmp_path).trust_bundle == ca.trust_bundle
    ca.retire_root(old_root)
    reloaded = CertificateAuthority.load(tmp_path)
    assert reloaded.trust_bundle.roots == (ca.root,)
    assert reloaded.intermediate == ca.intermediate


def test_cannot_retire_the_signing_root(ca: CertificateAuthority) -> None:
    with pytest.raises(CaStateError, match="rotate_root"):
        ca.retire_root(ca.root)


def test_cannot_retire_an_unknown_root(ca: CertificateAuthority) -> None:
    with pytest.raises(CaStateError, match="not in this CA's trust bundle"):
        ca.retire_root(CertificateAuthority.create().root)
