"""The control plane: turns Kubernetes objects into the mesh model, streams it
to the proxies, and runs the CA with node authorization.

- :meth:`ControlPlane.apply` takes a batch of changed and removed objects,
  translates what they touch (:class:`k8s.translate.Translator`) and publishes the
  new snapshot on the config stream (15010, HBONE, mTLS), each proxy getting its own
  view of it (:mod:`k8s.views`: a ztunnel its node's, a waypoint its namespace's);
  :meth:`ControlPlane.update` does the same from the whole set of objects;
  :meth:`ControlPlane.serve_store` publishes what an object store holds after each
  change, changes close together translated once. Conflicts
  between objects are logged once and kept in ``translation.problems``; they
  never stop the rest of the config.
- The CA (15012) signs for callers that prove which node they are with the
  node's bearer token; :class:`NodeAuthorizer` lets a node's ztunnel have the
  ztunnel identity and the identities of the pods it captures on that node,
  nothing else (403 otherwise). A caller whose token is a service account's
  (``system:serviceaccount:NS:SA``: a waypoint) gets exactly that service
  account's identity (:class:`ca.auth.ServiceAccountAuthorizer`).
- Conditions written back to the store: also the traffic kinds'
  (:mod:`k8s.traffic_conditions`).
- The config stream gives namespace N's waypoint view to a certificate of N whose
  service account names a waypoint Gateway of N in the current snapshot, or is
  Istio's ``waypoint`` (:func:`k8s.config_server.gateway_waypoint_authorizer`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import structlog
import trio

from ca import CertificateAuthority, LocalSigner, serve_ca
from ca.auth import (
    Authenticator,
    Authorizer,
    Reviewer,
    ServiceAccountAuthorizer,
    ServiceAccountsOrNodes,
)
from k8s.config_server import (
    ConfigServer,
    ProxyAuthenticator,
    WaypointAuthorizer,
    gateway_waypoint_authorizer,
    node_token_authenticator,
)
from k8s.gateway_manifests import foreign_waypoint_classes
from k8s.manifests import (
    AuthorizationPolicy,
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    K8sObject,
    RequestAuthentication,
)
from k8s.route_conditions import parent_conditions, route_conditions
from k8s.store import Condition, ObjectRef, ObjectStore, ref_of
from k8s.traffic_conditions import traffic_conditions
from k8s.translate import (
    CONFLICT_REASONS,
    Problem,
    Translation,
    Translator,
    ztunnel_acceptance,
)
from k8s.translate_l7 import INVALID_WAYPOINT_FOR, WAYPOINT_REASONS, waypoint_ready
from k8s.translate_policy import waypoint_acceptance
from k8s.translate_traffic import KINDS as TRAFFIC_KINDS
from mesh.certs import open_certificate_manager
from mesh.constants import (
    CONDITION_ACCEPTED,
    CONDITION_WAYPOINT_ACCEPTED,
    CONDITION_WAYPOINT_BOUND,
    CONDITION_ZTUNNEL_ACCEPTED,
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_PORT,
    DEFAULT_TRUST_DOMAIN,
    WAYPOINT_CLASSES,
)
from mesh.hbone.server import ServerConnections, serve_hbone
from mesh.identity import (
    SpiffeId,
    WorkloadCertificate,
    control_plane_identity,
    ztunnel_identity,
)
from mesh.model import MeshSnapshot
from mesh.tokens import TokenTable

log = structlog.get_logger("k8s.controlplane")

COALESCE_WINDOW: Final = 0.1  # seconds: changes this close together are translated once


class NodeAuthorizer:
    """May node ``caller`` have ``identity``? Only for pods it runs (and ztunnel itself)."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def may_issue(self, caller: str, identity: SpiffeId) -> bool:
        if identity == ztunnel_identity(identity.trust_domain):
            return True
        snapshot = self._plane.snapshot
        if snapshot is None:
            return False
        # A waypoint's pod (native tunnel) gets its own certificate with its own token:
        # a ztunnel never needs the identity of a pod it does not capture.
        return any(
            w.meshed and not w.native_tunnel and w.identity == identity
            for w in snapshot.workloads_on_node(caller)
        )


@dataclass(frozen=True)
class Access:
    """Who may have what, as a deployment decides it: the CA's authenticator (bearer
    token -> caller) and authorizer (may that caller have that identity?), the config
    stream's check of a ztunnel and of a waypoint. Local mode passes none and gets the
    tokens of :attr:`ControlPlane.tokens` (nodes' and waypoints' service accounts'),
    service accounts' own identities or else :class:`NodeAuthorizer`, and waypoints
    checked against the snapshot's Gateways; ``ambit controlplane --source kubernetes``
    passes the API server's TokenReview (:class:`ca.kube.TokenReviewAuthenticator`) and
    the pods of its store (:class:`k8s.ca_nodes.KubeNodeAuthorizer`)."""

    ca_authenticator: Authenticator | Reviewer | None = None
    ca_authorizer: Authorizer | None = None
    proxies: ProxyAuthenticator | None = None
    waypoints: WaypointAuthorizer | None = None


class ControlPlane:
    def __init__(
        self,
        authority: CertificateAuthority,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        access: Access | None = None,
    ) -> None:
        access = access or Access()
        self.authority = authority
        self.trust_domain = trust_domain
        # One per node (the CA's and the config stream's proof) and per waypoint service
        # account (``system:serviceaccount:NS:SA``, the CA's only).
        self.tokens = TokenTable()
        self._ca_authenticator: Authenticator | Reviewer = access.ca_authenticator or self.tokens
        self._ca_authorizer: Authorizer = access.ca_authorizer or ServiceAccountsOrNodes(
            ServiceAccountAuthorizer(trust_domain), NodeAuthorizer(self)
        )
        self.snapshot: MeshSnapshot | None = None
        self.translation: Translation | None = None
        self._translator = Translator(trust_domain=trust_domain)
        proxy_ids = frozenset({ztunnel_identity(trust_domain)})
        self.config = ConfigServer(
            access.proxies or node_token_authenticator(self.tokens, proxy_ids),
            authorize_waypoint=access.waypoints
            or gateway_waypoint_authorizer(lambda: self.snapshot),
        )
        self._held_for: list[str] = []
        self._read: tuple[ObjectStore, int, str] | None = None  # the store when last translated
        self.draining = False
        self._accepting = trio.CancelScope()
        self._connections = ServerConnections()
        self._handlers: trio.Nursery | None = None
        self._served = trio.Event()  # serve() has returned

    def update(
        self, objects: Iterable[K8sObject], *, store: ObjectStore | None = None
    ) -> MeshSnapshot | None:
        """Make ``objects`` the whole set (objects held and not given are removed),
        translate what changed and publish the result if the model changed.

        With ``store``, nothing is published until every kind has been listed (the
        store's listing gate: a view with pods but not yet policies would be an
        allow-all mesh); None is returned while the gate is closed. After each
        translation the objects' conditions are written back to the store."""
        if store is not None and not store.complete:
            waiting = store.unlisted()
            if waiting != self._held_for:
                log.info("config_held", reason="not every kind is listed yet", unlisted=waiting)
                self._held_for = waiting
            return None
        self._held_for = []
        given = {ref_of(o): o for o in objects}
        removed = [ref for ref in self._translator.objects() if ref not in given]
        translation = self.apply(given.values(), removed)
        if store is not None:
            self._read = (store, store.version, store.source_read)
            write_conditions(store, translation)
        return self.snapshot

    def source_read(self) -> str:
        """What the published snapshot reflects, in the source's words
        (:attr:`ObjectStore.source_read`): the store's now if nothing changed since it was
        translated (a file rewritten with the same objects), else the one translated; ""
        before the first."""
        if self._read is None:
            return ""
        store, version, read = self._read
        return store.source_read if store.version == version else read

    def apply(
        self, upserts: Iterable[K8sObject] = (), removes: Iterable[ObjectRef] = ()
    ) -> Translation:
        """Remove ``removes``, add or replace ``upserts``, and publish the next snapshot if
        the model changed. Problems that appear, change or clear are logged once."""
        previous = self.translation
        translation = self._translator.apply(upserts, removes)
        self.translation = translation
        if previous is None or translation.problems is not previous.problems:
            _log_problems(previous.problems if previous else {}, translation.problems)
        snapshot = translation.snapshot
        if snapshot is not self.snapshot:
            self.snapshot = snapshot
            self.config.publish(snapshot)
            log.info(
                "config_published",
                version=snapshot.version,
                workloads=len(snapshot.workloads),
                services=len(snapshot.services),
                authorizations=len(snapshot.authorizations),
                problems=len(translation.problems),
            )
        return translation

    async def serve_store(
        self,
        store: ObjectStore,
        *,
        window: float = COALESCE_WINDOW,
        after: Callable[[MeshSnapshot | None], Awaitable[None]] | None = None,
    ) -> None:
        """Publish what ``store`` holds after each change: changes within ``window``
        seconds of one another are translated once (the sources feed the store; this is
        the one place they reach the proxies). ``after`` hears each result (None while
        the listing gate is closed). A bug in translation is logged once and the last
        good config stays. Runs until cancelled."""
        seen = -1
        while True:
            await store.wait_changed(seen)
            await trio.sleep(window)  # what else arrives now is translated with it
            seen = store.version
            try:
                snapshot = self.update(store.objects(), store=store)
            except Exception:
                log.exception("config_translation_failed", objects=len(store.entries()))
                continue
            if after is not None:
                await after(snapshot)

    async def serve(
        self,
        host: str,
        *,
        ca_port: int = CONTROL_PLANE_PORT,
        config_port: int = CONFIG_STREAM_PORT,
        task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the CA and the config stream; ``started((ca_port, config_port))``."""
        identity = control_plane_identity(self.trust_domain)
        signer = LocalSigner(self.authority, caller="controlplane")
        async with open_certificate_manager(signer) as certs:
            await certs.fetch_now(identity)

            def current() -> WorkloadCertificate:
                cert = certs.get(identity)
                assert cert is not None  # fetched above; renewals replace it
                return cert

            # Accepted connections live in ``handlers``, which outlives the accept loops:
            # a drain stops accepting while requests and streams in flight finish.
            async with trio.open_nursery() as handlers:
                self._handlers = handlers
                with self._accepting:
                    async with trio.open_nursery() as nursery:
                        ca_addrs = await nursery.start(
                            lambda task_status: serve_ca(
                                self.authority,
                                self._ca_authenticator,
                                self._ca_authorizer,
                                host=host,
                                port=ca_port,
                                identity=identity,
                                handler_nursery=handlers,
                                task_status=task_status,
                            )
                        )
                        config_addr = await nursery.start(
                            lambda task_status: serve_hbone(
                                self.config.handle,
                                certificate=current,
                                host=host,
                                port=config_port,
                                handler_nursery=handlers,
                                connections=self._connections,
                                task_status=task_status,
                            )
                        )
                        log.info(
                            "control_plane_listening", host=host, ca_port=ca_addrs[0][1],
                            config_port=config_addr[1],
                        )  # fmt: skip
                        task_status.started((ca_addrs[0][1], config_addr[1]))
            self._served.set()

    async def drain(self, seconds: float) -> None:
        """Stop without dropping what can finish: :attr:`draining` turns True at once (the
        process reports not-ready); the CA and the config stream stop accepting; every
        config stream connection gets a two-phase GOAWAY and every proxy's stream ends
        (they keep their config and reconnect to a successor); certificate requests in
        flight finish, up to ``seconds``; what is left then is cut. :meth:`serve` then
        returns."""
        self.draining = True
        self._accepting.cancel()
        await self._connections.drain()
        ended = self.config.end_streams()
        log.info("control_plane_draining", config_streams=ended, seconds=seconds)
        with trio.move_on_after(seconds) as waited:
            await self._served.wait()
        if waited.cancelled_caught and self._handlers is not None:
            self._handlers.cancel_scope.cancel()
            await self._served.wait()
        log.info("control_plane_drained", cut_at_deadline=waited.cancelled_caught)


def policy_conditions(
    policy: AuthorizationPolicy | RequestAuthentication, snapshot: MeshSnapshot
) -> list[Condition]:
    """The conditions of an AuthorizationPolicy: whether ztunnel enforces it as written
    (:func:`k8s.translate.ztunnel_acceptance`) and, for one meant for a waypoint, which
    waypoints it is bound to (:func:`k8s.translate_policy.waypoint_acceptance`); of a
    RequestAuthentication, the second alone (only a waypoint checks JWTs)."""
    out = []
    if isinstance(policy, AuthorizationPolicy):
        accepted, reason, message = ztunnel_acceptance(policy)
        out.append(Condition(CONDITION_ZTUNNEL_ACCEPTED, _status(accepted), reason, message))
    at_waypoint = waypoint_acceptance(policy, snapshot)
    if at_waypoint is not None:
        bound, reason, message = at_waypoint
        out.append(Condition(CONDITION_WAYPOINT_ACCEPTED, _status(bound), reason, message))
    return out


def _status(true: bool) -> Literal["True", "False"]:
    return "True" if true else "False"


def problem_conditions(problems: tuple[Problem, ...]) -> list[Condition]:
    """``ambit.io/Accepted`` of a Pod or Service a conflict touches: False for the one left
    out, True (with the conflict as its reason) for the one that kept the address."""
    conflicts = [p for p in problems if p.reason in CONFLICT_REASONS]
    return [
        Condition(
            CONDITION_ACCEPTED,
            "True" if p.reason.endswith("Kept") else "False",
            p.reason,
            p.message,
        )
        for p in conflicts[:1]
    ]


def waypoint_condition(problems: tuple[Problem, ...], waypoint: str | None) -> list[Condition]:
    """``ambit.io/WaypointBound`` of a Service: True when its traffic goes through
    ``waypoint``, False with the reason when the waypoint it uses (or its namespace's)
    cannot be used; none when it uses no waypoint."""
    for p in problems:
        if p.reason in WAYPOINT_REASONS:
            return [Condition(CONDITION_WAYPOINT_BOUND, "False", p.reason, p.message)]
    if waypoint is None:
        return []
    message = f"traffic to this Service goes through waypoint {waypoint}"
    return [Condition(CONDITION_WAYPOINT_BOUND, "True", "Bound", message)]


def gateway_api_conditions(
    entry_obj: K8sObject,
    problems: tuple[Problem, ...],
    snapshot: MeshSnapshot,
    foreign: frozenset[str] = frozenset(),
) -> list[Condition]:
    """Gateway API's own conditions on the Gateway API objects ambit is the controller
    of: a GatewayClass of a waypoint class is ``Accepted``; a waypoint Gateway is
    ``Accepted`` and ``Programmed`` once a waypoint proxy runs for it (its Service has a
    meshed endpoint); a route ``Accepted`` and ``ResolvedRefs``
    (:func:`k8s.route_conditions.route_conditions`; per parent, as Gateway API writes
    them, :func:`write_conditions` stores them too). Objects of other controllers get
    none, nor the waypoint classes in ``foreign`` (another controller's GatewayClass
    claims them: :func:`k8s.gateway_manifests.foreign_waypoint_classes`)."""
    reasons = {p.reason: p for p in problems}
    if isinstance(entry_obj, GatewayClass):
        if entry_obj.name not in WAYPOINT_CLASSES or entry_obj.name in foreign:
            return []
        return [Condition("Accepted", "True", "Accepted", "a waypoint class: ambit runs it")]
    if isinstance(entry_obj, Gateway):
        if entry_obj.gateway_class not in WAYPOINT_CLASSES or entry_obj.gateway_class in foreign:
            return []
        key = f"{entry_obj.namespace}/{entry_obj.name}"
        bad = reasons.get(INVALID_WAYPOINT_FOR)
        accepted = Condition(
            "Accepted", "True", "Accepted", bad.message if bad else "a waypoint of this namespace"
        )
        if waypoint_ready(snapshot.service(key), snapshot.workload):
            programmed = Condition("Programmed", "True", "Programmed", "a waypoint proxy runs")
        else:
            programmed = Condition(
                "Programmed", "False", "Pending",
                f"no waypoint proxy runs for it: Service {key} has no meshed, ready endpoint",
            )  # fmt: skip
        return [accepted, programmed]
    if isinstance(entry_obj, HTTPRoute | GRPCRoute):
        return route_conditions(problems)
    return []


def write_conditions(store: ObjectStore, translation: Translation) -> None:
    """Every object's conditions, computed from the objects as stored and the problems
    translation found (a condition that no longer holds is removed); a route's per parent
    too."""

    def waypoint_gateway(namespace: str, name: str) -> bool:
        found = store.get(("Gateway", namespace, name))
        obj = found.obj if found is not None else None
        return isinstance(obj, Gateway) and obj.gateway_class in WAYPOINT_CLASSES

    foreign = foreign_waypoint_classes(
        e.obj for e in store.entries("GatewayClass") if isinstance(e.obj, GatewayClass)
    )
    for kind in ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute"):
        for entry in store.entries(kind):
            problems = translation.problems.get(entry.ref, ())
            conditions = gateway_api_conditions(entry.obj, problems, translation.snapshot, foreign)
            parents = None
            if isinstance(entry.obj, HTTPRoute | GRPCRoute):
                parents = parent_conditions(entry.obj, problems, waypoint_gateway)
            if conditions or entry.conditions or parents or entry.parents:
                store.set_conditions(entry.ref, conditions, uid=entry.obj.uid, parents=parents)
    for kind in TRAFFIC_KINDS:
        for entry in store.entries(kind):
            problems = translation.problems.get(entry.ref, ())
            conditions, ancestors = traffic_conditions(entry.obj, problems)
            store.set_conditions(entry.ref, conditions, uid=entry.obj.uid, parents=ancestors)
    for kind in ("AuthorizationPolicy", "RequestAuthentication"):
        for entry in store.entries(kind):
            policy = entry.obj
            assert isinstance(policy, AuthorizationPolicy | RequestAuthentication)
            store.set_conditions(
                entry.ref, policy_conditions(policy, translation.snapshot), uid=policy.uid
            )
    for kind in ("Pod", "Service"):
        for entry in store.entries(kind):
            problems = translation.problems.get(entry.ref, ())
            conditions = problem_conditions(problems)
            if kind == "Service":
                service = translation.snapshot.service(f"{entry.obj.namespace}/{entry.obj.name}")
                bound = service.waypoint if service is not None else None
                conditions += waypoint_condition(problems, bound)
            if conditions or entry.conditions:
                store.set_conditions(entry.ref, conditions, uid=entry.obj.uid)


def _log_problems(
    before: Mapping[ObjectRef, tuple[Problem, ...]], after: Mapping[ObjectRef, tuple[Problem, ...]]
) -> None:
    """One event per object whose problems appeared or changed, one per object whose
    problems cleared."""
    for ref in sorted(after.keys() | before.keys()):
        if after.get(ref) == before.get(ref):
            continue
        kind, namespace, name = ref
        problems = after.get(ref, ())
        for problem in problems:
            log.warning(
                "object_problem",
                kind=kind,
                namespace=namespace,
                name=name,
                reason=problem.reason,
                error=problem.message,
            )
        if not problems:
            log.info("object_problem_cleared", kind=kind, namespace=namespace, name=name)
