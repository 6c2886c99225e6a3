"""Who may have which certificate on Kubernetes: istiod's node authorizer, on the pods the
control plane's store holds.

The caller is whoever the API server's TokenReview said its token belongs to
(:class:`ca.auth.Caller`: a service account, and the pod a pod-bound token is bound to).
:func:`refusal` decides, purely, from a :class:`PodIndex` of the store's pods:

- a pod-bound token counts only while its pod exists with the uid the token names and
  has not finished (the API server goes on accepting a deleted pod's token for its
  ~10 s review cache; the control plane's watch sees the delete sooner);
- every service account may have its own identity (``spiffe://<td>/ns/NS/sa/SA``):
  a waypoint, the ztunnel itself;
- only the ztunnel service account (``ambit-system/ztunnel`` unless configured) may ask
  for other identities, with a token bound to its pod, and only for an identity
  ``NS/SA`` of which a pod runs on the node of the caller's pod (pods indexed by
  service account and node), never the control plane's.

Every refusal is a sentence the caller receives with its 403 and the CA logs once.
:class:`KubeNodeAuthorizer` is the :class:`ca.auth.Authorizer` (and
:class:`ca.auth.Explaining`) over a live store, its index rebuilt when the store changed.

The config stream asks the same question of a ztunnel (:func:`node_refusal`,
:func:`kube_proxy_authenticator`): which node's view may it have? Only the one its token's
pod runs on, the token reviewed as the CA reviews it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ca.auth import Caller, NotAuthenticated, Reviewer, ReviewUnavailable, service_account_of
from k8s.config_server import ProxyAuthenticator
from k8s.core_manifests import Pod
from k8s.store import ObjectStore
from mesh.constants import CONTROL_PLANE_SERVICE_ACCOUNT, SYSTEM_NAMESPACE, ZTUNNEL_SERVICE_ACCOUNT
from mesh.identity import SpiffeId
from mesh.reason import Failure, Reason

FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ServiceAccountRef:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ServiceAccountRef:
        """``NAMESPACE/NAME``."""
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"{text!r} is not NAMESPACE/NAME of a service account")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


DEFAULT_ZTUNNEL_ACCOUNT = ServiceAccountRef(SYSTEM_NAMESPACE, ZTUNNEL_SERVICE_ACCOUNT)


class PodIndex:
    """Pods by ``(namespace, name)`` and, for those not finished, by (namespace, service
    account, node)."""

    def __init__(self, pods: Iterable[Pod], *, listed: bool = True) -> None:
        self.listed = listed  # False: the store has not listed every pod yet
        self._pods: dict[tuple[str, str], Pod] = {}
        self._on_node: dict[tuple[str, str, str], list[str]] = {}
        for pod in pods:
            self._pods[(pod.namespace, pod.name)] = pod
            if pod.node_name and pod.phase not in FINISHED_PHASES:
                key = (pod.namespace, pod.service_account, pod.node_name)
                self._on_node.setdefault(key, []).append(pod.name)

    def pod(self, namespace: str, name: str) -> Pod | None:
        return self._pods.get((namespace, name))

    def running_on(self, namespace: str, service_account: str, node: str) -> tuple[str, ...]:
        """Names of the pods of ``namespace/service_account`` on ``node``, not finished."""
        return tuple(self._on_node.get((namespace, service_account, node), ()))


def _caller_pod(caller: str, pods: PodIndex) -> Pod | str | None:
    """The live pod a pod-bound token is bound to, None for a token bound to no pod, or
    why the token counts for nothing (its pod is gone, replaced or finished)."""
    claim = caller.pod if isinstance(caller, Caller) else None
    if claim is None:
        return None
    where = f"{claim.namespace}/{claim.name}"
    if not pods.listed:
        return "the control plane has not listed the cluster's pods yet; retry shortly"
    pod = pods.pod(claim.namespace, claim.name)
    if pod is None or pod.uid != claim.uid:
        return (
            f"the token is bound to pod {where} (uid {claim.uid}), which does not exist"
            " (deleted, or not seen by the control plane yet)"
        )
    if pod.phase in FINISHED_PHASES:
        return f"the token is bound to pod {where}, which has finished ({pod.phase})"
    return pod


def node_refusal(
    caller: str,
    node: str,
    pods: PodIndex,
    *,
    ztunnel: ServiceAccountRef = DEFAULT_ZTUNNEL_ACCOUNT,
) -> str | None:
    """None if ``caller`` may have ``node``'s config view: it is the ztunnel's service
    account with a token bound to a live pod scheduled on ``node``; else why not."""
    account = service_account_of(caller)
    if account is None or ServiceAccountRef(*account) != ztunnel:
        return (
            f"the token is {caller!r}'s: only the ztunnel's service account ({ztunnel}) may"
            " have a node's config"
        )
    pod = _caller_pod(caller, pods)
    if isinstance(pod, str):
        return pod
    if pod is None:
        return (
            f"a ztunnel must present a token bound to its pod (a projected service-account"
            f" token), which says its node; this one names no pod, so not node {node!r}"
        )
    if pod.node_name != node:
        on = f"node {pod.node_name!r}" if pod.node_name else "no node yet"
        return f"the token's pod {pod.namespace}/{pod.name} runs on {on}, not on {node!r}"
    return None


def refusal(
    caller: str,
    identity: SpiffeId,
    pods: PodIndex,
    *,
    trust_domain: str,
    ztunnel: ServiceAccountRef = DEFAULT_ZTUNNEL_ACCOUNT,
) -> str | None:
    """None if ``caller`` may have ``identity``; else why not (see the module)."""
    account = service_account_of(caller)
    if account is None:
        return f"caller {caller!r} is not a service account; the CA signs for service accounts"
    if identity.trust_domain != trust_domain:
        return f"{identity} is not of this mesh's trust domain {trust_domain!r}"
    pod = _caller_pod(caller, pods)
    if isinstance(pod, str):
        return pod
    namespace, name = account
    if (identity.namespace, identity.service_account) == account:
        return None  # every service account may have its own identity
    if ServiceAccountRef(namespace, name) != ztunnel:
        return (
            f"service account {namespace}/{name} may have only its own identity"
            f" (spiffe://{trust_domain}/ns/{namespace}/sa/{name}), not {identity};"
            f" only the ztunnel's service account ({ztunnel}) may ask for others"
        )
    if pod is None:
        return (
            f"a ztunnel ({ztunnel}) asking for {identity} must present a token bound to its"
            " pod (a projected service-account token), which says its node"
        )
    if (identity.namespace, identity.service_account) == (
        SYSTEM_NAMESPACE,
        CONTROL_PLANE_SERVICE_ACCOUNT,
    ):
        return f"no ztunnel may have the control plane's identity {identity}"
    if not pod.node_name:
        return f"the caller's pod {pod.namespace}/{pod.name} is not scheduled on a node yet"
    if not pods.running_on(identity.namespace, identity.service_account, pod.node_name):
        return (
            f"no pod of service account {identity.namespace}/{identity.service_account} runs"
            f" on node {pod.node_name}, the node of the caller's pod {pod.namespace}/{pod.name}"
        )
    return None


class KubeNodeAuthorizer:
    """:func:`refusal` over the Pods of ``store``, indexed again whenever it changed."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        trust_domain: str,
        ztunnel: ServiceAccountRef = DEFAULT_ZTUNNEL_ACCOUNT,
    ) -> None:
        self._store = store
        self.trust_domain = trust_domain
        self.ztunnel = ztunnel
        self._index: PodIndex | None = None
        self._version = -1

    def index(self) -> PodIndex:
        if self._index is None or self._version != self._store.version:
            pods = [e.obj for e in self._store.entries("Pod") if isinstance(e.obj, Pod)]
            listed = "Pod" not in self._store.unlisted()
            self._index = PodIndex(pods, listed=listed)
            self._version = self._store.version
        return self._index

    def refusal(self, caller: str, identity: SpiffeId) -> str | None:
        return refusal(
            caller, identity, self.index(), trust_domain=self.trust_domain, ztunnel=self.ztunnel
        )

    def may_issue(self, caller: str, identity: SpiffeId) -> bool:
        return self.refusal(caller, identity) is None

    def node_refusal(self, caller: str, node: str) -> str | None:
        return node_refusal(caller, node, self.index(), ztunnel=self.ztunnel)


def kube_proxy_authenticator(reviewer: Reviewer, nodes: KubeNodeAuthorizer) -> ProxyAuthenticator:
    """The config stream's check of a ztunnel on Kubernetes: its certificate is the
    ztunnel service account's identity, and its bearer token, reviewed by the API server
    (the CA's audience, the CA's review cache), is bound to a live pod of that account on
    the node whose view it asks for. 503 while the API server cannot be asked."""

    async def check(token: str | None, node: str, peer: SpiffeId) -> str | Failure | None:
        ztunnel = nodes.ztunnel
        if (peer.trust_domain, peer.namespace, peer.service_account) != (
            nodes.trust_domain, ztunnel.namespace, ztunnel.name,
        ):  # fmt: skip
            return f"{peer} is not the ztunnel's identity (service account {ztunnel})"
        if token is None:
            return (
                "no token: a ztunnel shows its pod-bound service-account token (audience"
                " ambit-ca) to prove which node it runs on"
            )
        try:
            caller = await reviewer.review(token)
        except NotAuthenticated as exc:
            return str(exc)
        except ReviewUnavailable as exc:
            return Failure(Reason.UNAVAILABLE, str(exc))
        return nodes.node_refusal(caller, node)

    return check
