"""The waypoint's certificate from the helper process (``mesh.issuer_process``) against
the real CA service on loopback: a usable credential that TLS presents and peers verify
(the identity from the SAN list OpenSSL verified), the CA's refusals with the same kind
and reason as in process, and a helper that dies without an answer."""

from __future__ import annotations

import datetime as dt
import sys

import pytest
import trio

from ca import CertificateAuthority
from mesh.certs import (
    CaClient,
    CaRefused,
    CaUnreachable,
    CertificateRequestError,
    SignerIssuer,
)
from mesh.credential import Credential, PemBundle
from mesh.identity import (
    IdentityError,
    PeerVerificationError,
    SpiffeId,
    WorkloadCertificate,
    control_plane_identity,
)
from mesh.issuer_process import ProcessIssuer
from mesh.tls import TlsStream, client_context, server_context
from tests.integration.test_ca_service import DB, TD, TOKEN, WEB, Service, start_service


def issuer(service: Service, *, token: str = TOKEN) -> ProcessIssuer:
    return ProcessIssuer(
        service.address, token=token, bundle=PemBundle(service.ca.trust_bundle.pem()),
        trust_domain=TD, ca_identity=control_plane_identity(TD),
    )  # fmt: skip


@pytest.fixture
async def service(nursery: trio.Nursery) -> Service:
    return await start_service(nursery, CertificateAuthority.create(intermediate=True))


async def test_the_helper_issues_a_credential_that_tls_presents_and_peers_verify(
    service: Service,
) -> None:
    with trio.fail_after(30):
        credential = await issuer(service).issue(WEB, 3600)
        assert isinstance(credential, Credential)
        assert credential.identity == WEB
        now = dt.datetime.now(dt.UTC)
        assert credential.not_before <= now < credential.not_after
        assert credential.not_after - credential.not_before <= dt.timedelta(hours=1, minutes=5)
        assert credential.not_before < credential.renew_at() < credential.not_after
        assert credential.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
        # The chain runs to the intermediate; the roots are the CA's own answer.
        assert credential.chain_pem().count(b"BEGIN CERTIFICATE") == 2
        assert credential.bundle.pem() == service.ca.trust_bundle.pem()

        db = await _issue_in_process(service)
        a, b = trio.socket.socketpair()
        server = TlsStream(a, server_context(credential), server_side=True)
        client = TlsStream(b, client_context(db), server_side=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handshake)
            await client.handshake()
        assert client.verify_peer(trust_domain=TD, expected=frozenset({WEB})) == WEB
        assert server.verify_peer(trust_domain=TD) == DB
        with pytest.raises(PeerVerificationError) as other:
            client.verify_peer(trust_domain=TD, expected=frozenset({DB}))
        assert other.value.rule == "unexpected-identity"
        with pytest.raises(PeerVerificationError) as domain:
            server.verify_peer(trust_domain="other.local")
        assert domain.value.rule == "trust-domain"
        a.close()
        b.close()


async def _issue_in_process(
    service: Service, identity: SpiffeId = DB, token: str = TOKEN
) -> WorkloadCertificate:
    client = CaClient(service.address, token=token, bundle=service.ca.trust_bundle)
    return await SignerIssuer(client).issue(identity, None)


async def test_a_refusal_comes_back_as_the_cas_own(service: Service) -> None:
    """A wrong token, an identity the caller may not have: the same kind, status and
    reason as :class:`CaClient` raises in process, so the manager logs them alike."""
    outside = SpiffeId(TD, "kube-system", "admin")
    with trio.fail_after(30):
        for token, identity in (("wrong", WEB), (TOKEN, outside)):
            with pytest.raises(CaRefused) as helper:
                await issuer(service, token=token).issue(identity, None)
            with pytest.raises(CaRefused) as in_process:
                await _issue_in_process(service, identity, token)
            assert (helper.value.status, helper.value.reason) == (
                in_process.value.status, in_process.value.reason,
            )  # fmt: skip
            assert str(helper.value) == str(in_process.value)


async def test_an_absent_ca_and_a_dead_helper_are_unreachable() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there
    ca = CertificateAuthority.create()
    service = Service(ca, ("127.0.0.1", port))
    with trio.fail_after(30):
        with pytest.raises(CaUnreachable) as absent:
            await issuer(service).issue(WEB, None)
        assert f"port {port}" in str(absent.value)

        dead = issuer(service)
        dead.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
        with pytest.raises(CaUnreachable) as died:
            await dead.issue(WEB, None)
        assert died.value.reason == "helper-failed"
        assert "exited 3" in str(died.value)

        garbled = issuer(service)
        garbled.command = [sys.executable, "-c", 'print(\'{"identity": "x", "key": 1}\')']
        with pytest.raises(CertificateRequestError) as bad:
            await garbled.issue(WEB, None)
        assert bad.value.reason == "bad-response"


def test_a_bundle_that_is_not_pem_is_refused_when_read() -> None:
    with pytest.raises(IdentityError, match="PEM"):
        PemBundle(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for empty in (b"", b"# no certificate here\n"):
        with pytest.raises(IdentityError, match=r"PEM|at least one"):
            PemBundle(empty)
    ca = CertificateAuthority.create()
    assert PemBundle(ca.trust_bundle.pem()).pem() == ca.trust_bundle.pem()
