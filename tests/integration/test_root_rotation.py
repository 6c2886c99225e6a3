"""Root rotation through real HBONE handshakes: during the overlap leaves of the
old and the new root talk to each other; once the old root is retired, a leaf
it signed is refused by the ``chain`` rule on either end."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from ca import CertificateAuthority
from mesh.hbone import HboneError, HboneRequest
from mesh.hbone.client import HboneConnectError, open_hbone_pool
from mesh.identity import SpiffeId, TrustBundle, WorkloadCertificate
from tests.conftest import CLIENT_ID, SERVER_ID
from tests.integration.hbone_support import connect, echo_handler, start_server
from tests.waiting import wait_until

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


@pytest.fixture(params=[False, True], ids=["root-only", "intermediate"])
def ca(request: pytest.FixtureRequest) -> CertificateAuthority:
    return CertificateAuthority.create(intermediate=request.param)


def issue(ca: CertificateAuthority, identity: SpiffeId) -> WorkloadCertificate:
    return ca.issue_workload_certificate(identity, caller="test")


def trusting(cert: WorkloadCertificate, bundle: TrustBundle) -> WorkloadCertificate:
    """The same key and chain, trusting ``bundle`` (what a workload holds once the
    CA handed it the new bundle)."""
    return WorkloadCertificate(cert.identity, cert.key, cert.chain, bundle)


async def exchange(server: WorkloadCertificate, client: WorkloadCertificate) -> bytes:
    """One CONNECT from ``client`` to an HBONE server presenting ``server``; echoed bytes."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, server)
            async with open_hbone_pool(lambda _s: client) as pool:
                stream = await connect(pool, address)
                await stream.send_all(b"across the rotation")
                await stream.send_eof()
                echoed = b""
                while data := await stream.receive_some():
                    echoed += data
            nursery.cancel_scope.cancel()
    return echoed


@pytest.mark.parametrize("old_side", ["client", "server"])
async def test_old_and_new_root_leaves_talk_during_the_overlap(
    ca: CertificateAuthority, old_side: str
) -> None:
    old_root = ca.root
    old_client, old_server = issue(ca, CLIENT_ID), issue(ca, SERVER_ID)
    assert old_client.bundle.roots == (old_root,)

    new_root = ca.rotate_root()
    overlap = ca.trust_bundle
    assert overlap.roots == (new_root, old_root)
    new_client, new_server = issue(ca, CLIENT_ID), issue(ca, SERVER_ID)
    # Each chain ends under its own root (directly, or through that root's intermediate).
    assert old_client.chain[-1].issuer == old_root.subject != new_root.subject
    assert new_client.chain[-1].issuer == new_root.subject

    if old_side == "client":
        client, server = trusting(old_client, overlap), new_server
    else:
        client, server = new_client, trusting(old_server, overlap)
    assert await exchange(server, client) == b"across the rotation"


async def test_a_leaf_of_a_retired_root_is_refused_by_the_server(
    ca: CertificateAuthority, logs: Logs
) -> None:
    old_root = ca.root
    old_client = issue(ca, CLIENT_ID)
    ca.rotate_root()
    ca.retire_root(old_root)
    server = issue(ca, SERVER_ID)  # trusts the new root only
    assert server.bundle.roots == (ca.root,)
    handled: list[object] = []

    async def handler(request: HboneRequest) -> None:
        handled.append(request)
        await echo_handler(request)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, handler, server)
            # The client still trusts both roots: only the server's check can refuse it.
            client = trusting(old_client, TrustBundle((ca.root, old_root)))
            async with open_hbone_pool(lambda _s: client) as pool:
                with pytest.raises(HboneError) as caught:
                    await connect(pool, address)
            await wait_until(lambda: any(e["event"] == "hbone_handshake_rejected" for e in logs))
            nursery.cancel_scope.cancel()
    # TLS 1.3: the client learns of the refusal from the server's alert after its handshake.
    assert "UNKNOWN_CA" in str(caught.value)
    assert handled == [], "a leaf of a retired root reached the handler"
    [rejected] = [e for e in logs if e["event"] == "hbone_handshake_rejected"]
    assert rejected["rule"] == "chain"


async def test_a_server_with_a_leaf_of_a_retired_root_is_refused_by_the_pool(
    ca: CertificateAuthority, logs: Logs
) -> None:
    old_root = ca.root
    old_server = issue(ca, SERVER_ID)
    ca.rotate_root()
    ca.retire_root(old_root)
    client = issue(ca, CLIENT_ID)  # trusts the new root only
    server = trusting(old_server, TrustBundle((ca.root, old_root)))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, server)
            async with open_hbone_pool(lambda _s: client) as pool:
                with pytest.raises(HboneConnectError, match=r"\(chain\)") as refused:
                    await connect(pool, address)
            nursery.cancel_scope.cancel()
    assert refused.value.rule == "chain"
