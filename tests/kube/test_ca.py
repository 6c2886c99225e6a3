"""The CA of ``ambit controlplane --source kubernetes`` against the real API server.

Each test runs the control plane in-process (``run_controlplane``, the same wiring as the
command) over the test's namespace: its CA keys live in Secrets there, its ztunnel
service account is ``<ns>/ztunnel``. Callers are what a ztunnel or a waypoint would be:
a TokenRequest bound to a pod, sent as the bearer token of a ``CaClient`` with a CSR,
and each test asserts what that caller observes: a chain whose leaf has the right SPIFFE
SAN and verifies to the root, or a refusal with its status, code and reason.

The deleted pod's token is refused without waiting out the API server's ~10 s cache of
token reviews: the CA checks the token's pod against the control plane's store (fed by
its watch) on every request, whatever either cache holds.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from cryptography import x509

from ca.certificates import CaKeyPair, new_ca
from ca.secret_keys import CaSecrets
from k8s.ca_nodes import ServiceAccountRef
from k8s.controlplane_process import ControlPlaneConfig, Ports, run_controlplane
from mesh.ca_client import CaClient, CaRefused, SignedChain
from mesh.identity import SpiffeId, TrustBundle, build_csr, certs_to_pem, generate_key
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import Cluster
from tests.kube.kubelet import create_node, pod, remove_pod

pytestmark = pytest.mark.kube

TD = "cluster.local"
SETTLE_SECONDS = 15.0  # for the control plane's watch to see a new pod


@dataclass
class Mesh:
    admin: KubeAdmin
    cluster: Cluster
    ns: str
    node_a: str
    node_b: str

    def config(self) -> ControlPlaneConfig:
        return ControlPlaneConfig(
            files=(), ca_dir=None, source="kubernetes", kubeconfig=self.cluster.kubeconfig,
            ca_secrets=CaSecrets(namespace=self.ns),
            ztunnel_account=ServiceAccountRef(self.ns, "ztunnel"),
            host="127.0.0.1", ca_port=0, config_port=0, metrics_port=0, trust_domain=TD,
        )  # fmt: skip

    def identity(self, service_account: str) -> SpiffeId:
        return SpiffeId(TD, self.ns, service_account)

    async def run_pod(self, name: str, service_account: str, node: str) -> str:
        """A pod of ``service_account`` on ``node`` (the account made if needed); its uid."""
        try:
            await self.admin.get("v1", "ServiceAccount", service_account, self.ns)
        except NotFound:
            await self.admin.create(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": service_account, "namespace": self.ns},
                }
            )
        created = await self.admin.create(
            pod(self.ns, name, node=node, service_account=service_account)
        )
        return str(created["metadata"]["uid"])

    async def token(
        self, pod_name: str, service_account: str, uid: str, audience: str = "ambit-ca"
    ) -> str:
        """A token of ``service_account`` bound to the pod, as the kubelet projects it."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience],
                "expirationSeconds": 600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": uid},
            },
        }
        answer = await self.admin.post_subresource(
            "v1", "ServiceAccount", service_account, "token", request, self.ns
        )
        return str(answer["status"]["token"])

    async def secret(self, name: str) -> Obj:
        return await self.admin.get("v1", "Secret", name, self.ns)

    async def root(self) -> TrustBundle:
        data = (await self.secret("ambit-ca"))["data"]
        return TrustBundle.from_pem(base64.b64decode(data["root-cert.pem"]))


@pytest.fixture
async def mesh(kube_admin: KubeAdmin, kube_cluster: Cluster, kube_ns: str) -> AsyncIterator[Mesh]:
    nodes = (f"a-{kube_ns}", f"b-{kube_ns}")
    with trio.fail_after(20):
        for node in nodes:
            await create_node(kube_admin, node)
    yield Mesh(kube_admin, kube_cluster, kube_ns, *nodes)
    with trio.fail_after(20):
        for node in nodes:
            await kube_admin.delete("v1", "Node", node)


@asynccontextmanager
async def control_plane(config: ControlPlaneConfig) -> AsyncIterator[Ports]:
    async with trio.open_nursery() as nursery:
        ports: Ports = await nursery.start(
            lambda task_status: run_controlplane(config, task_status=task_status)
        )
        yield ports
        nursery.cancel_scope.cancel()


async def ask(
    ports: Ports, bundle: TrustBundle, token: str, identity: SpiffeId
) -> SignedChain | CaRefused:
    """What a caller gets: the chain, or the CA's refusal. A refusal that only says the
    control plane has not seen the caller's pod yet is asked again."""

    async def attempt() -> SignedChain | CaRefused | None:
        client = CaClient(("127.0.0.1", ports.ca), token=token, bundle=bundle, trust_domain=TD)
        try:
            return await client.sign(build_csr(identity, generate_key()), None)
        except CaRefused as refused:
            if "not seen by the control plane yet" in refused.message:
                return None
            if "not listed the cluster's pods yet" in refused.message:
                return None
            return refused

    return await wait_for(attempt, seconds=SETTLE_SECONDS, interval=0.2)


async def ask_issued(
    ports: Ports, bundle: TrustBundle, token: str, identity: SpiffeId
) -> SignedChain | CaRefused:
    """:func:`ask` for an identity that must be issued once the control plane's watch has
    caught up with the pods the test made (on a loaded machine it lags the API server by
    seconds): a refusal is asked again until ``SETTLE_SECONDS``, then returned."""

    async def attempt() -> SignedChain | None:
        answer = await ask(ports, bundle, token, identity)
        return None if isinstance(answer, CaRefused) else answer

    with trio.move_on_after(SETTLE_SECONDS):
        return await wait_for(attempt, seconds=SETTLE_SECONDS, interval=0.2)
    return await ask(ports, bundle, token, identity)


def san(chain: SignedChain) -> str:
    names = chain[0][0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    assert len(uris) == 1
    return uris[0]


def issued(answer: SignedChain | CaRefused) -> SignedChain:
    assert not isinstance(answer, CaRefused), f"refused: {answer.status} {answer.message}"
    return answer


def refused(answer: SignedChain | CaRefused) -> CaRefused:
    assert isinstance(answer, CaRefused), f"issued {san(answer)}"
    return answer


async def test_a_ztunnel_gets_the_identity_of_a_pod_on_its_node(mesh: Mesh) -> None:
    with trio.fail_after(60):
        async with control_plane(mesh.config()) as ports:
            uid = await mesh.run_pod("ztunnel-a", "ztunnel", mesh.node_a)
            await mesh.run_pod("web-1", "web", mesh.node_a)
            token = await mesh.token("ztunnel-a", "ztunnel", uid)
            bundle = await mesh.root()
            chain = issued(await ask_issued(ports, bundle, token, mesh.identity("web")))
            own = issued(await ask_issued(ports, bundle, token, mesh.identity("ztunnel")))
    assert san(chain) == f"spiffe://{TD}/ns/{mesh.ns}/sa/web"
    assert san(own) == f"spiffe://{TD}/ns/{mesh.ns}/sa/ztunnel"
    leaf, intermediate = chain[0]
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(bundle.roots[0])
    assert chain[1] == bundle


async def test_a_token_of_another_audience_is_refused(mesh: Mesh) -> None:
    with trio.fail_after(60):
        async with control_plane(mesh.config()) as ports:
            uid = await mesh.run_pod("ztunnel-a", "ztunnel", mesh.node_a)
            token = await mesh.token("ztunnel-a", "ztunnel", uid, audience="someone-else")
            answer = refused(await ask(ports, await mesh.root(), token, mesh.identity("ztunnel")))
    assert (answer.status, answer.reason) == (401, "unauthenticated")
    assert "refused the token for audience 'ambit-ca'" in answer.message
    assert "audience" in answer.message.partition(": ")[2]  # the API server's own reason


async def test_a_ztunnel_is_refused_a_pod_on_another_node(mesh: Mesh) -> None:
    with trio.fail_after(60):
        async with control_plane(mesh.config()) as ports:
            uid = await mesh.run_pod("ztunnel-a", "ztunnel", mesh.node_a)
            await mesh.run_pod("web-1", "web", mesh.node_a)
            await mesh.run_pod("db-1", "db", mesh.node_b)
            token = await mesh.token("ztunnel-a", "ztunnel", uid)
            bundle = await mesh.root()
            issued(
                await ask_issued(ports, bundle, token, mesh.identity("web"))
            )  # the store has them
            answer = refused(await ask(ports, bundle, token, mesh.identity("db")))
    assert (answer.status, answer.reason) == (403, "not-authorized")
    assert answer.message.endswith(
        f"no pod of service account {mesh.ns}/db runs on node {mesh.node_a},"
        f" the node of the caller's pod {mesh.ns}/ztunnel-a"
    )


async def test_a_deleted_pods_token_is_refused_at_once(mesh: Mesh) -> None:
    with trio.fail_after(60):
        async with control_plane(mesh.config()) as ports:
            uid = await mesh.run_pod("ztunnel-a", "ztunnel", mesh.node_a)
            await mesh.run_pod("web-1", "web", mesh.node_a)
            token = await mesh.token("ztunnel-a", "ztunnel", uid)
            bundle = await mesh.root()
            issued(await ask_issued(ports, bundle, token, mesh.identity("web")))
            await remove_pod(mesh.admin, mesh.ns, "ztunnel-a")
            # Well within the API server's ~10 s review cache, in which it still accepts
            # the token: the CA's store has seen the delete.
            client = CaClient(("127.0.0.1", ports.ca), token=token, bundle=bundle, trust_domain=TD)

            async def refusal() -> CaRefused | None:
                try:
                    await client.sign(build_csr(mesh.identity("web"), generate_key()), None)
                except CaRefused as answer:
                    return answer
                return None

            with trio.fail_after(5):
                answer = await wait_for(refusal, seconds=5, interval=0.1)
    assert (answer.status, answer.reason) == (403, "not-authorized")
    assert answer.message.endswith(
        f"the token is bound to pod {mesh.ns}/ztunnel-a (uid {uid}), which does not exist"
        " (deleted, or not seen by the control plane yet)"
    )


async def test_another_account_may_not_ask_for_someone_elses_identity(mesh: Mesh) -> None:
    with trio.fail_after(60):
        async with control_plane(mesh.config()) as ports:
            uid = await mesh.run_pod("web-1", "web", mesh.node_a)
            await mesh.run_pod("db-1", "db", mesh.node_a)  # on the same node, even
            token = await mesh.token("web-1", "web", uid)
            answer = refused(await ask(ports, await mesh.root(), token, mesh.identity("db")))
    assert (answer.status, answer.reason) == (403, "not-authorized")
    assert answer.message.endswith(
        f"service account {mesh.ns}/web may have only its own identity"
        f" (spiffe://{TD}/ns/{mesh.ns}/sa/web), not spiffe://{TD}/ns/{mesh.ns}/sa/db;"
        f" only the ztunnel's service account ({mesh.ns}/ztunnel) may ask for others"
    )


async def test_a_waypoint_gets_its_own_identity_only(mesh: Mesh) -> None:
    with trio.fail_after(60):
        async with control_plane(mesh.config()) as ports:
            uid = await mesh.run_pod("waypoint-1", "waypoint", mesh.node_b)
            await mesh.run_pod("web-1", "web", mesh.node_b)
            token = await mesh.token("waypoint-1", "waypoint", uid)
            bundle = await mesh.root()
            own = issued(await ask_issued(ports, bundle, token, mesh.identity("waypoint")))
            other = refused(await ask(ports, bundle, token, mesh.identity("web")))
    assert san(own) == f"spiffe://{TD}/ns/{mesh.ns}/sa/waypoint"
    assert other.status == 403
    assert f"service account {mesh.ns}/waypoint may have only its own" in other.message


async def test_a_restarted_control_plane_keeps_the_root(mesh: Mesh) -> None:
    with trio.fail_after(90):
        uid = await mesh.run_pod("web-1", "web", mesh.node_a)
        token = await mesh.token("web-1", "web", uid)
        async with control_plane(mesh.config()) as ports:
            secret = await mesh.secret("ambit-ca")
            bundle = await mesh.root()
            first = issued(await ask_issued(ports, bundle, token, mesh.identity("web")))
        async with control_plane(mesh.config()) as ports:
            second = issued(await ask_issued(ports, bundle, token, mesh.identity("web")))
            after = await mesh.secret("ambit-ca")
    assert first[1] == second[1] == bundle
    assert second[0][1] == first[0][1], "the same intermediate signs"
    assert after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    assert after["metadata"]["uid"] == secret["metadata"]["uid"]
    assert after["type"] == "ambit.io/ca-root"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _key_pem(pair: CaKeyPair) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pair.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


async def test_an_operators_cacerts_secret_is_used_as_is(mesh: Mesh) -> None:
    import datetime as dt

    root = new_ca("operator root", TD, dt.timedelta(days=30))
    inter = new_ca("operator intermediate", TD, dt.timedelta(days=10), issuer=root, path_length=0)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": mesh.ns},
        "data": {
            "ca-cert.pem": _b64(certs_to_pem([inter.cert])),
            "ca-key.pem": _b64(_key_pem(inter)),
            "root-cert.pem": _b64(certs_to_pem([root.cert])),
            "cert-chain.pem": _b64(certs_to_pem([inter.cert, root.cert])),
        },
    }
    bundle = TrustBundle((root.cert,))
    with trio.fail_after(60):
        created = await mesh.admin.create(secret)
        uid = await mesh.run_pod("web-1", "web", mesh.node_a)
        token = await mesh.token("web-1", "web", uid)
        async with control_plane(mesh.config()) as ports:
            chain = issued(await ask_issued(ports, bundle, token, mesh.identity("web")))
        after = await mesh.secret("cacerts")
        with pytest.raises(NotFound):
            await mesh.secret("ambit-ca")  # none made beside the operator's
    assert san(chain) == f"spiffe://{TD}/ns/{mesh.ns}/sa/web"
    assert chain[0][1:] == (inter.cert,)
    assert chain[1] == bundle
    chain[0][0].verify_directly_issued_by(inter.cert)
    assert after["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
