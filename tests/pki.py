"""Test certificates, including the kinds the real CA refuses to make
(expired, two URI SANs, another trust domain). Built with cryptography."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity import SpiffeId, TrustBundle, WorkloadCertificate, generate_key
from mesh.tls import ALPN_H2, _memory_file


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Pki:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def bundle(self) -> TrustBundle:
        return TrustBundle((self.cert,))

    def issue_raw(
        self,
        uris: list[str],
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = key or generate_key()
        start = not_before or _now() - dt.timedelta(minutes=5)
        end = not_after or _now() + dt.timedelta(hours=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=True,
            )
        return key, builder.sign(self.key, hashes.SHA256())

    def issue(self, identity: SpiffeId | str, **kwargs: dt.datetime) -> WorkloadCertificate:
        spiffe = SpiffeId.parse(identity) if isinstance(identity, str) else identity
        key, cert = self.issue_raw([str(spiffe)], **kwargs)  # type: ignore[arg-type]
        return WorkloadCertificate(spiffe, key, (cert,), self.bundle)

    def raw_client_context(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> ssl.SSLContext:
        """A client context for a certificate WorkloadCertificate would refuse."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.set_alpn_protocols([ALPN_H2])
        ctx.load_verify_locations(cadata=self.bundle.pem().decode())
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with _memory_file(pem) as path:
            ctx.load_cert_chain(path)
        return ctx


def make_root(name: str = "ambit test root") -> Pki:
    key = generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(hours=1))
        .not_valid_after(_now() + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Pki(key, cert)
