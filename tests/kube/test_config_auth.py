"""Who may have which view of the config stream, on Kubernetes, against the real API
server: a ztunnel proves its node with the token the kubelet projects into its pod
(audience ``ambit-ca``), reviewed by the API server as the CA reviews it, and gets only
the view of the node its pod runs on.

Each caller is what a ztunnel would be: its certificate signed by the control plane's
CA for that same token (tests/kube/test_ca.py covers the CA), then an HBONE CONNECT to
the config stream naming a node; each test asserts what that caller observes: the
view's first snapshot, or the refusal's status, reason code and sentence.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from k8s.controlplane_process import Ports
from mesh.ca_client import CaClient, CaRefused, SignedChain
from mesh.config_stream import NODE_HEADER, ROLE_HEADER, MessageStream
from mesh.hbone import HboneStreamRefused
from mesh.hbone.client import open_hbone_pool
from mesh.identity import (
    SpiffeId,
    TrustBundle,
    WorkloadCertificate,
    build_csr,
    control_plane_identity,
    generate_key,
)
from mesh.reason import Reason
from tests.kube.client import wait_for
from tests.kube.test_ca import TD, Mesh, control_plane
from tests.kube.test_ca import mesh as mesh  # the fixture

Logs = list[MutableMapping[str, Any]]

pytestmark = pytest.mark.kube

SECONDS = 60.0


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


async def certificate(
    ports: Ports, bundle: TrustBundle, token: str, who: SpiffeId
) -> WorkloadCertificate:
    """``who``'s certificate from the control plane's CA, for ``token``; asked again
    while the CA has not seen the token's pod yet."""
    key = generate_key()
    client = CaClient(("127.0.0.1", ports.ca), token=token, bundle=bundle, trust_domain=TD)

    async def attempt() -> SignedChain | None:
        try:
            return await client.sign(build_csr(who, key), None)
        except CaRefused as refusal:
            if "yet" in refusal.message:
                return None
            raise

    chain, _ = await wait_for(attempt, seconds=SECONDS, interval=0.2)
    return WorkloadCertificate(who, key, chain, bundle)


async def subscribe(
    ports: Ports, cert: WorkloadCertificate, node: str, token: str | None
) -> dict[str, object] | HboneStreamRefused:
    """The first message of ``node``'s view, or the refusal."""
    headers: list[tuple[str, str]] = [(ROLE_HEADER, "ztunnel"), (NODE_HEADER, node)]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    async with open_hbone_pool(lambda _s: cert) as pool:
        try:
            stream = await pool.connect(
                source=cert.identity, address=("127.0.0.1", ports.config),
                authority=f"127.0.0.1:{ports.config}",
                expected=[control_plane_identity(TD)], headers=headers,
            )  # fmt: skip
        except HboneStreamRefused as refused:
            return refused
        async with stream:
            messages = MessageStream(stream)
            await messages.send({"type": "hello", "node": node, "role": "ztunnel", "version": None})
            first = await messages.receive()
            assert first is not None
            return dict(first)


async def settled(
    ports: Ports, cert: WorkloadCertificate, node: str, token: str | None
) -> dict[str, object] | HboneStreamRefused:
    """:func:`subscribe`, asked again while the refusal only says the control plane has
    not seen the caller's pod yet (its watch is a moment behind the API server)."""
    with trio.fail_after(SECONDS):
        while True:
            answer = await subscribe(ports, cert, node, token)
            if not (isinstance(answer, HboneStreamRefused) and "yet" in str(answer)):
                return answer
            await trio.sleep(0.2)


def refused(answer: object, status: int, reason: Reason) -> None:
    """The caller saw a refusal with this status and reason code (the sentence stays in
    the control plane's log, as for every HBONE refusal)."""
    assert isinstance(answer, HboneStreamRefused), f"admitted: {answer}"
    assert (answer.status, answer.reason) == (status, reason), str(answer)


def why(logs: Logs) -> list[str]:
    """The control plane's one log line per refusal: its sentences, in order."""
    return [e["reason"] for e in logs if e["event"] == "config_stream_refused"]


async def ztunnel_on(
    mesh: Mesh, node: str, ports: Ports, name: str = "ztunnel-a"
) -> tuple[str, WorkloadCertificate]:
    uid = await mesh.run_pod(name, "ztunnel", node)
    token = await mesh.token(name, "ztunnel", uid)
    bundle = await mesh.root()
    return token, await certificate(ports, bundle, token, mesh.identity("ztunnel"))


async def test_a_ztunnel_gets_its_own_nodes_view_and_no_other(mesh: Mesh, logs: Logs) -> None:
    with trio.fail_after(SECONDS * 2):
        async with control_plane(mesh.config()) as ports:
            await mesh.run_pod("web-1", "web", mesh.node_a)
            token, cert = await ztunnel_on(mesh, mesh.node_a, ports)
            own = await settled(ports, cert, mesh.node_a, token)
            other = await subscribe(ports, cert, mesh.node_b, token)
            bare = await subscribe(ports, cert, mesh.node_a, None)
    assert isinstance(own, dict), own
    assert own["type"] == "snapshot"
    refused(other, 403, Reason.NOT_AUTHORIZED)
    refused(bare, 401, Reason.UNAUTHENTICATED)
    other_node, no_token = why(logs)[-2:]
    assert f"runs on node {mesh.node_a!r}, not on {mesh.node_b!r}" in other_node
    assert no_token.startswith("no token: a ztunnel shows its pod-bound")


async def test_tokens_that_are_not_a_live_ztunnel_pods_are_refused(mesh: Mesh, logs: Logs) -> None:
    with trio.fail_after(SECONDS * 2):
        async with control_plane(mesh.config()) as ports:
            token, cert = await ztunnel_on(mesh, mesh.node_a, ports)
            assert isinstance(await settled(ports, cert, mesh.node_a, token), dict)
            # Another audience: the API server refuses it for ambit-ca.
            uid = await mesh.run_pod("ztunnel-b", "ztunnel", mesh.node_a)
            elsewhere = await mesh.token("ztunnel-b", "ztunnel", uid, audience="someone-else")
            audience = await subscribe(ports, cert, mesh.node_a, elsewhere)
            refused(audience, 403, Reason.NOT_AUTHORIZED)
            assert "refused the token for audience 'ambit-ca'" in why(logs)[-1]
            # A pod of another service account on the node: not a ztunnel.
            web_uid = await mesh.run_pod("web-1", "web", mesh.node_a)
            web = await mesh.token("web-1", "web", web_uid)
            refused(await settled(ports, cert, mesh.node_a, web), 403, Reason.NOT_AUTHORIZED)
            assert "only the ztunnel's service account" in why(logs)[-1]
            # The ztunnel's pod deleted: its token counts for nothing, whatever caches hold.
            await mesh.admin.delete("v1", "Pod", "ztunnel-a", mesh.ns, grace_period_seconds=0)

            async def refusal() -> HboneStreamRefused | None:
                answer = await subscribe(ports, cert, mesh.node_a, token)
                return answer if isinstance(answer, HboneStreamRefused) else None

            gone = await wait_for(refusal, seconds=SECONDS, interval=0.2)
    refused(gone, 403, Reason.NOT_AUTHORIZED)
    assert "does not exist" in why(logs)[-1]
