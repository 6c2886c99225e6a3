"""The CA service on a real loopback socket, with real TLS and HTTP/2, and its real client."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import structlog
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca import CertificateAuthority, StaticAuthorizer, TokenAuthenticator, serve_ca
from mesh.certs import CaClient, CaNotTrusted, CaRefused, CaUnreachable, open_certificate_manager
from mesh.identity import (
    SpiffeId,
    TrustBundle,
    WorkloadCertificate,
    build_csr,
    generate_key,
    verify_peer,
)
from mesh.tls import bootstrap_client_context, client_context, server_context
from mesh.tokens import TokenFile

TD = "cluster.local"
WEB = SpiffeId(TD, "default", "web")
DB = SpiffeId(TD, "default", "db")
ADMIN = SpiffeId(TD, "kube-system", "admin")
TOKEN = "node-a-secret"


@dataclass
class Service:
    ca: CertificateAuthority
    address: tuple[str, int]

    def client(self, token: str = TOKEN) -> CaClient:
        return CaClient(self.address, token=token, bundle=self.ca.trust_bundle)


async def start_service(
    nursery: trio.Nursery,
    ca: CertificateAuthority,
    identity: SpiffeId | None = None,
    handshake_timeout: float = 10.0,
) -> Service:
    serve = partial(
        serve_ca,
        ca,
        TokenAuthenticator({TOKEN: "node-a"}),
        StaticAuthorizer({"node-a": {"spiffe://cluster.local/ns/default/sa/*"}}),
        host="127.0.0.1",
        port=0,
        identity=identity,
        handshake_timeout=handshake_timeout,
    )
    addresses = await nursery.start(serve)
    return Service(ca, addresses[0])


@pytest.fixture
async def service(nursery: trio.Nursery) -> Service:
    return await start_service(nursery, CertificateAuthority.create(intermediate=True))


async def raw_request(
    service: Service,
    *,
    method: str = "POST",
    path: str = "/v1/certificates",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> tuple[int, dict[str, str]]:
    """One HTTP/2 request written by hand, to send what CaClient never would."""
    tcp = await trio.open_tcp_stream(*service.address)
    tls = trio.SSLStream(tcp, bootstrap_client_context(service.ca.trust_bundle))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
    conn.initiate_connection()
    request = [(":method", method), (":scheme", "https"), (":authority", "ca"), (":path", path)]
    conn.send_headers(1, [*request, *headers], end_stream=not body)
    if body:
        conn.send_data(1, body, end_stream=True)
    await tls.send_all(conn.data_to_send())
    status, answer = 0, b""
    while True:
        for event in conn.receive_data(await tls.receive_some()):
            if isinstance(event, h2.events.ResponseReceived):
                status = next(int(v) for k, v in event.headers if k in (":status", b":status"))
            elif isinstance(event, h2.events.DataReceived):
                answer += event.data
            elif isinstance(event, h2.events.StreamEnded):
                await tls.aclose()
                return status, json.loads(answer)


def csr_for(identity: SpiffeId) -> bytes:
    return build_csr(identity, generate_key())


async def test_signs_a_csr_into_a_usable_certificate(service: Service) -> None:
    with trio.fail_after(10):
        key = generate_key()
        chain, bundle = await service.client().sign(build_csr(WEB, key), None)
    cert = WorkloadCertificate(WEB, key, chain, bundle)
    assert cert.identity == WEB
    assert chain[1:] == (service.ca.intermediate,)
    assert bundle == service.ca.trust_bundle


async def test_certificates_from_the_service_carry_mutual_tls(service: Service) -> None:
    with trio.fail_after(10):
        async with open_certificate_manager(service.client()) as manager:
            web = await manager.fetch_now(WEB)
            db = await manager.fetch_now(DB)
        left, right = trio.testing.memory_stream_pair()
        client = trio.SSLStream(left, client_context(web))
        server = trio.SSLStream(right, server_context(db), server_side=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
    assert verify_peer(client.getpeercert(True), trust_domain=TD, expected=frozenset({DB})) == DB
    assert verify_peer(server.getpeercert(True), trust_domain=TD) == WEB


async def test_ttl_is_passed_to_the_ca(service: Service) -> None:
    with trio.fail_after(10):
        chain, _ = await service.client().sign(csr_for(WEB), 3600)
    lifetime = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
    assert lifetime.total_seconds() <= 3600 + 120


async def test_401_without_a_token(service: Service) -> None:
    with trio.fail_after(10):
        body = json.dumps({"csr": csr_for(WEB).decode()}).encode()
        status, answer = await raw_request(service, body=body)
    assert (status, answer["error"]) == (401, "unauthenticated")
    assert "Bearer" in answer["message"]


async def test_401_with_a_wrong_token(service: Service) -> None:
    with trio.fail_after(10), pytest.raises(CaRefused) as info:
        await service.client(token="guessed").sign(csr_for(WEB), None)
    assert (info.value.status, info.value.reason) == (401, "unauthenticated")


async def test_403_for_an_identity_the_caller_may_not_have(service: Service) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        trio.fail_after(10),
        pytest.raises(CaRefused) as info,
    ):
        await service.client().sign(csr_for(ADMIN), None)
    assert (info.value.status, info.value.reason) == (403, "not-authorized")
    assert str(ADMIN) in info.value.message
    assert not [e for e in logs if e["event"] == "certificate_issued"]


async def test_400_for_a_garbage_csr(service: Service) -> None:
    with trio.fail_after(10), pytest.raises(CaRefused) as info:
        await service.client().sign(b"-----BEGIN CERTIFICATE REQUEST-----\nnonsense", None)
    assert (info.value.status, info.value.reason) == (400, "malformed-csr")


async def test_400_for_a_csr_asking_for_a_dns_name(service: Service) -> None:
    key = generate_key()
    names = [x509.UniformResourceIdentifier(str(WEB)), x509.DNSName("web.default.svc")]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with trio.fail_after(10), pytest.raises(CaRefused) as info:
        await service.client().sign(csr, None)
    assert (info.value.status, info.value.reason) == (400, "forbidden-san")
    assert "web.default.svc" in info.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "bad-json"),
        (b'["a list"]', "bad-json"),
        (b'{"ttl_seconds": 60}', "bad-json"),
        (b'{"csr": "x", "ttl_seconds": -1}', "bad-ttl"),
    ],
)
async def test_400_for_a_bad_body(service: Service, body: bytes, code: str) -> None:
    auth = [("authorization", f"Bearer {TOKEN}")]
    with trio.fail_after(10):
        status, answer = await raw_request(service, headers=auth, body=body)
    assert (status, answer["error"]) == (400, code)


async def test_404_and_405(service: Service) -> None:
    with trio.fail_after(10):
        assert await raw_request(service, path="/v1/keys") == (
            404,
            {
                "error": "not-found",
                "message": "no such path '/v1/keys'; the CA serves POST /v1/certificates",
            },
        )
        status, answer = await raw_request(service, method="GET")
    assert (status, answer["error"]) == (405, "method-not-allowed")


async def drain(stream: trio.abc.ReceiveStream) -> None:
    """Read until the server has closed the connection."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


async def test_bad_clients_do_not_disturb_a_good_one(service: Service) -> None:
    with structlog.testing.capture_logs() as logs, trio.fail_after(10):
        garbage = await trio.open_tcp_stream(*service.address)
        await garbage.send_all(b"\x00\x01 this is not TLS" * 50)

        not_h2 = trio.SSLStream(
            await trio.open_tcp_stream(*service.address),
            bootstrap_client_context(service.ca.trust_bundle),
        )
        await not_h2.do_handshake()
        await not_h2.send_all(b"GET / HTTP/1.1\r\nhost: ca\r\n\r\n")

        vanishing = await trio.open_tcp_stream(*service.address)
        await vanishing.send_all(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello...
        await vanishing.aclose()  # ...and gone

        # While those are open, a good client is served.
        chain, _ = await service.client().sign(csr_for(WEB), None)
        assert chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)

        await drain(garbage)
        await drain(not_h2)
        await garbage.aclose()
        await not_h2.aclose()
        # And the service keeps serving afterwards.
        await service.client().sign(csr_for(DB), None)
    failures = {e["reason"] for e in logs if e["event"] == "ca_connection_failed"}
    assert {"tls-handshake", "protocol-error"} <= failures
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "ca_connection_failed")


async def test_wrong_alpn_is_refused_and_logged(service: Service) -> None:
    context = bootstrap_client_context(service.ca.trust_bundle)
    context.set_alpn_protocols(["http/1.1"])
    with structlog.testing.capture_logs() as logs, trio.fail_after(10):
        tls = trio.SSLStream(await trio.open_tcp_stream(*service.address), context)
        await tls.do_handshake()
        await drain(tls)
        await tls.aclose()
    assert any(e.get("reason") == "wrong-alpn" for e in logs)


async def test_a_silent_client_is_cut_off(nursery: trio.Nursery) -> None:
    service = await start_service(nursery, CertificateAuthority.create(), handshake_timeout=0.2)
    with structlog.testing.capture_logs() as logs, trio.fail_after(5):
        silent = await trio.open_tcp_stream(*service.address)
        await drain(silent)
        await silent.aclose()
    assert any(e.get("reason") == "handshake-timeout" for e in logs)


async def test_client_refuses_a_server_with_another_identity(nursery: trio.Nursery) -> None:
    ca = CertificateAuthority.create()
    impostor = await start_service(nursery, ca, identity=SpiffeId(TD, "default", "impostor"))
    with trio.fail_after(10), pytest.raises(CaNotTrusted) as info:
        await impostor.client().sign(csr_for(WEB), None)
    assert info.value.reason == "unexpected-identity"
    assert "impostor" in info.value.message


async def test_client_refuses_a_server_from_another_ca(service: Service) -> None:
    stranger = TrustBundle((CertificateAuthority.create().root,))
    client = CaClient(service.address, token=TOKEN, bundle=stranger)
    with trio.fail_after(10), pytest.raises(CaNotTrusted) as info:
        await client.sign(csr_for(WEB), None)
    assert info.value.reason == "chain"


async def test_client_reports_an_unreachable_ca() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    bundle = CertificateAuthority.create().trust_bundle
    with trio.fail_after(10), pytest.raises(CaUnreachable, match=f"port {port} reachable"):
        await CaClient(("127.0.0.1", port), token=TOKEN, bundle=bundle).sign(csr_for(WEB), None)


async def test_client_follows_a_root_rotation(service: Service) -> None:
    client = service.client()
    old_root = service.ca.root
    service.ca.rotate_root()
    with trio.fail_after(10):
        _, bundle = await client.sign(csr_for(WEB), None)
        assert bundle.roots == (service.ca.root, old_root)
        assert client.bundle == bundle
        service.ca.retire_root(old_root)
        # The service now presents a certificate of the new root; the client trusts it.
        _, bundle = await client.sign(csr_for(WEB), None)
    assert bundle.roots == (service.ca.root,)


async def test_a_client_shows_the_token_its_file_holds_now(
    service: Service, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text("an-expired-token")
    client = CaClient(service.address, token=TokenFile(path), bundle=service.ca.trust_bundle)
    with pytest.raises(CaRefused) as refused:
        await client.sign(build_csr(WEB, generate_key()), None)
    assert refused.value.status == 401
    path.write_text(TOKEN)  # rotated: the same client shows the new one
    chain, _bundle = await client.sign(build_csr(WEB, generate_key()), None)
    assert chain[0].subject is not None
