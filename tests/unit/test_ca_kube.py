"""The CA on Kubernetes without sockets: TokenReview answers read into callers, the review
cache, the node authorizer's decisions over pods, and the CA's keys in Secrets."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.auth import Caller, NotAuthenticated, PodClaim, ReviewUnavailable, StaticAuthorizer
from ca.authority import CaConfig, CertificateAuthority
from ca.certificates import CaKeyPair, new_ca
from ca.errors import CaFileError, CaStateError
from ca.kube import ApiUnavailable, ReviewCache, TokenReviewAuthenticator, caller_from_review
from ca.secret_keys import CaSecrets, ca_from_cacerts, ca_from_secret, load_ca_from_secrets
from k8s.ca_nodes import PodIndex, ServiceAccountRef, node_refusal, refusal
from k8s.core_manifests import Pod
from mesh.identity import SpiffeId, build_csr, certs_to_pem, generate_key

TD = "cluster.local"
ZTUNNEL = ServiceAccountRef("ambit-system", "ztunnel")
ZT_CALLER = "system:serviceaccount:ambit-system:ztunnel"


def review(username: str, **extra: str) -> dict[str, Any]:
    keys = {k: [v] for k, v in extra.items()}
    named = {f"authentication.kubernetes.io/{k.replace('_', '-')}": v for k, v in keys.items()}
    return {
        "status": {
            "authenticated": True,
            "audiences": ["ambit-ca"],
            "user": {"username": username, "extra": named},
        }
    }


def test_a_pod_bound_review_names_the_pod() -> None:
    caller = caller_from_review(
        review(ZT_CALLER, pod_name="zt-1", pod_uid="u1", node_name="node-a")
    )
    assert caller == ZT_CALLER
    assert caller.pod == PodClaim("ambit-system", "zt-1", "u1", "node-a")
    assert caller_from_review(review(ZT_CALLER)).pod is None  # not bound to a pod


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"status": {"authenticated": False, "error": "token audiences invalid"}}, "audiences"),
        ({"status": {"authenticated": True, "audiences": ["other"]}}, "not for 'ambit-ca'"),
        (review("alice"), "not to a service account"),
        ({}, "no status"),
    ],
)
def test_refused_reviews_say_why(answer: dict[str, Any], words: str) -> None:
    with pytest.raises(NotAuthenticated, match=words):
        caller_from_review(answer)


def test_the_review_cache_expires_and_is_bounded() -> None:
    now = [0.0]
    cache = ReviewCache(seconds=10, size=2, clock=lambda: now[0])
    cache.put("a", Caller("x"))
    cache.put("b", Caller("y"))
    assert cache.get("a") == "x"  # now b is the least recently used
    cache.put("c", Caller("z"))
    assert (cache.get("b"), len(cache)) == (None, 2)
    now[0] = 10.0
    assert (cache.get("a"), cache.get("c")) == (None, None)


class FakeApi:
    def __init__(self, answers: list[tuple[int, dict[str, Any]] | Exception]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, Mapping[str, Any] | None]] = []

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        self.sent.append((method, path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_only_successful_reviews_are_cached() -> None:
    refused = {"status": {"authenticated": False, "error": "expired"}}
    api = FakeApi([(201, refused), (201, review(ZT_CALLER)), ApiUnavailable("refused")])
    reviewer = TokenReviewAuthenticator(api)
    with pytest.raises(NotAuthenticated):
        await reviewer.review("t")
    assert await reviewer.review("t") == ZT_CALLER
    assert await reviewer.review("t") == ZT_CALLER  # from the cache: no third request
    assert len(api.sent) == 2
    assert api.sent[0][2] == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "t", "audiences": ["ambit-ca"]},
    }
    with pytest.raises(ReviewUnavailable, match="cannot review"):
        await reviewer.review("other")


def pod(ns: str, name: str, sa: str, node: str, uid: str = "", phase: str = "Running") -> Pod:
    return Pod(name=name, namespace=ns, uid=uid or f"uid-{name}", service_account=sa,
               node_name=node, phase=phase)  # fmt: skip


PODS = PodIndex(
    [
        pod("ambit-system", "zt-a", "ztunnel", "node-a"),
        pod("shop", "web-1", "web", "node-a"),
        pod("shop", "db-1", "db", "node-b"),
        pod("shop", "job-1", "batch", "node-a", phase="Succeeded"),
        pod("ambit-system", "cp", "ambit-controlplane", "node-a"),
    ]
)


def ztunnel_on_a(uid: str = "uid-zt-a") -> Caller:
    return Caller(ZT_CALLER, PodClaim("ambit-system", "zt-a", uid, "node-a"))


def says(reason: str | None, words: str) -> bool:
    return reason is not None and words in reason


def decide(caller: str, identity: str, pods: PodIndex = PODS) -> str | None:
    return refusal(caller, SpiffeId.parse(identity), pods, trust_domain=TD, ztunnel=ZTUNNEL)


def test_a_ztunnel_gets_identities_of_pods_on_its_node_only() -> None:
    assert decide(ztunnel_on_a(), f"spiffe://{TD}/ns/shop/sa/web") is None
    assert decide(ztunnel_on_a(), f"spiffe://{TD}/ns/ambit-system/sa/ztunnel") is None
    assert decide(ztunnel_on_a(), f"spiffe://{TD}/ns/shop/sa/db") == (
        "no pod of service account shop/db runs on node node-a,"
        " the node of the caller's pod ambit-system/zt-a"
    )
    finished = decide(ztunnel_on_a(), f"spiffe://{TD}/ns/shop/sa/batch")
    assert says(finished, "no pod of service account shop/batch")
    cp = decide(ztunnel_on_a(), f"spiffe://{TD}/ns/ambit-system/sa/ambit-controlplane")
    assert says(cp, "control plane's identity")
    other_td = decide(ztunnel_on_a(), "spiffe://example.org/ns/shop/sa/web")
    assert says(other_td, "trust domain")


def test_a_token_counts_only_while_its_pod_exists() -> None:
    gone = decide(ztunnel_on_a(uid="an-older-pod"), f"spiffe://{TD}/ns/shop/sa/web")
    assert says(gone, "does not exist")
    unlisted = PodIndex([], listed=False)
    waiting = decide(ztunnel_on_a(), f"spiffe://{TD}/ns/shop/sa/web", unlisted)
    assert says(waiting, "not listed")
    unbound = decide(Caller(ZT_CALLER), f"spiffe://{TD}/ns/shop/sa/web")
    assert says(unbound, "bound to its pod")


def test_any_other_account_gets_its_own_identity_only() -> None:
    web = Caller("system:serviceaccount:shop:web", PodClaim("shop", "web-1", "uid-web-1"))
    assert decide(web, f"spiffe://{TD}/ns/shop/sa/web") is None
    assert decide("system:serviceaccount:shop:web", f"spiffe://{TD}/ns/shop/sa/web") is None
    other = decide(web, f"spiffe://{TD}/ns/shop/sa/db")
    assert says(other, "may have only its own identity")
    node = decide("node-a", f"spiffe://{TD}/ns/shop/sa/web")
    assert says(node, "not a service account")


def test_a_ztunnel_may_have_the_config_view_of_its_pods_node_only() -> None:
    def view(caller: str, node: str, pods: PodIndex = PODS) -> str | None:
        return node_refusal(caller, node, pods, ztunnel=ZTUNNEL)

    assert view(ztunnel_on_a(), "node-a") is None
    assert view(ztunnel_on_a(), "node-b") == (
        "the token's pod ambit-system/zt-a runs on node 'node-a', not on 'node-b'"
    )
    assert says(view(ztunnel_on_a(uid="an-older-pod"), "node-a"), "does not exist")
    assert says(view(ztunnel_on_a(), "node-a", PodIndex([], listed=False)), "not listed")
    assert says(view(Caller(ZT_CALLER), "node-a"), "bound to its pod")
    web = Caller("system:serviceaccount:shop:web", PodClaim("shop", "web-1", "uid-web-1"))
    assert says(view(web, "node-a"), "only the ztunnel's service account")
    unscheduled = PodIndex([pod("ambit-system", "zt-a", "ztunnel", "")])
    assert says(view(ztunnel_on_a(), "node-a", unscheduled), "runs on no node yet")


def test_a_caller_is_its_name_to_other_authorizers() -> None:
    caller = Caller("node-a", PodClaim("ns", "p", "u"))
    web = SpiffeId(TD, "shop", "web")
    assert StaticAuthorizer({"node-a": [web]}).may_issue(caller, web)


def test_service_account_refs_parse() -> None:
    assert ServiceAccountRef.parse("ambit-system/ztunnel") == ZTUNNEL
    for bad in ("ztunnel", "/x", "a/b/c", "a/"):
        with pytest.raises(ValueError, match="is not NAMESPACE/NAME"):
            ServiceAccountRef.parse(bad)


# --- The CA's keys in Secrets ---------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_pem(pair: CaKeyPair) -> bytes:
    return pair.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def signs(authority: CertificateAuthority) -> SpiffeId:
    identity = SpiffeId(TD, "shop", "web")
    issued = authority.sign_csr(build_csr(identity, generate_key()), caller="test")
    for cert, issuer in zip(issued.chain, (*issued.chain[1:], authority.root), strict=True):
        cert.verify_directly_issued_by(issuer)
    return issued.identity


async def test_the_secret_is_created_once_then_read_back() -> None:
    secrets, config = CaSecrets(namespace="ns"), CaConfig()
    api = FakeApi([(404, {}), (404, {}), (201, {})])
    made = await load_ca_from_secrets(api, secrets, config)
    method, path, body = api.sent[-1]
    assert (method, path) == ("POST", "/api/v1/namespaces/ns/secrets")  # create, not update
    assert body is not None
    assert body["type"] == "ambit.io/ca-root"
    stored = {"metadata": body["metadata"], "data": body["data"]}
    again = await load_ca_from_secrets(FakeApi([(404, {}), (200, stored)]), secrets, config)
    assert (again.root, again.intermediate) == (made.root, made.intermediate)
    assert signs(again) == SpiffeId(TD, "shop", "web")
    with pytest.raises(CaStateError, match="never overwrites"):
        again.rotate_root()


async def test_losing_the_creation_race_takes_the_winners_keys() -> None:
    secrets = CaSecrets(namespace="ns")
    api = FakeApi([(404, {}), (404, {}), (201, {})])
    winner = await load_ca_from_secrets(api, secrets, CaConfig())
    body = api.sent[-1][2]
    assert body is not None
    stored = {"metadata": body["metadata"], "data": body["data"]}
    loser = await load_ca_from_secrets(
        FakeApi([(404, {}), (404, {}), (409, {}), (200, stored)]), secrets, CaConfig()
    )
    assert loser.root == winner.root


def cacerts(root: CaKeyPair, inter: CaKeyPair, *, chain: bool = True) -> dict[str, Any]:
    data = {
        "ca-cert.pem": b64(certs_to_pem([inter.cert])),
        "ca-key.pem": b64(key_pem(inter)),
        "root-cert.pem": b64(certs_to_pem([root.cert])),
    }
    if chain:
        data["cert-chain.pem"] = b64(certs_to_pem([inter.cert, root.cert]))
    return {"metadata": {"namespace": "ambit-system", "name": "cacerts"}, "data": data}


def test_an_operators_cacerts_signs_without_its_root_key() -> None:
    root = new_ca("op root", TD, dt.timedelta(days=9))
    inter = new_ca("op inter", TD, dt.timedelta(days=5), issuer=root, path_length=0)
    for with_chain in (True, False):
        authority = ca_from_cacerts(cacerts(root, inter, chain=with_chain), CaConfig())
        assert (authority.root, authority.intermediate) == (root.cert, inter.cert)
        assert signs(authority) == SpiffeId(TD, "shop", "web")
        with pytest.raises(CaStateError, match="operator"):
            authority.rotate_root()


def test_an_rsa_intermediate_signs_too() -> None:
    root = new_ca("op root", TD, dt.timedelta(days=9))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "rsa")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    authority = ca_from_cacerts(cacerts(root, CaKeyPair(cert, key)), CaConfig())
    assert signs(authority) == SpiffeId(TD, "shop", "web")


def test_a_broken_secret_says_what_is_wrong() -> None:
    root = new_ca("op root", TD, dt.timedelta(days=9))
    inter = new_ca("op inter", TD, dt.timedelta(days=5), issuer=root, path_length=0)
    stranger = new_ca("stranger", TD, dt.timedelta(days=9))
    with pytest.raises(CaFileError, match=r"no certificate of root-cert\.pem issued"):
        ca_from_cacerts(cacerts(stranger, inter, chain=False), CaConfig())
    mixed = cacerts(root, inter)
    mixed["data"]["ca-key.pem"] = b64(key_pem(stranger))
    with pytest.raises(CaFileError, match="does not belong"):
        ca_from_cacerts(mixed, CaConfig())
    with pytest.raises(CaFileError, match=r"root-cert\.pem is not PEM certificates"):
        ca_from_secret({"metadata": {}, "data": {"root-cert.pem": "eA=="}}, CaConfig())
    with pytest.raises(CaFileError, match=r"has no root-key\.pem"):
        ca_from_secret({"metadata": {}, "data": cacerts(root, inter)["data"]}, CaConfig())
