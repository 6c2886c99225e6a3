"""The control plane: turns Kubernetes objects into the mesh model, streams it
to the proxies, and runs the CA with node authorization.

- :meth:`ControlPlane.update` translates objects (pure) and publishes the new
  snapshot to every proxy on the config stream (15010, HBONE, mTLS).
- The CA (15012) signs for callers that prove which node they are with the
  node's bearer token; :class:`NodeAuthorizer` lets a node's ztunnel have the
  ztunnel identity and the identities of meshed pods scheduled on that node,
  nothing else (403 otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
import trio

from ca import CertificateAuthority, LocalSigner, serve_ca
from k8s.config_server import ConfigServer, node_token_authenticator
from k8s.manifests import AuthorizationPolicy, K8sObject
from k8s.store import Condition, ObjectStore
from k8s.translate import translate, ztunnel_acceptance
from mesh.certs import open_certificate_manager
from mesh.constants import (
    CONDITION_WAYPOINT_ACCEPTED,
    CONDITION_ZTUNNEL_ACCEPTED,
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_PORT,
    DEFAULT_TRUST_DOMAIN,
)
from mesh.hbone.server import serve_hbone
from mesh.identity import (
    SpiffeId,
    WorkloadCertificate,
    control_plane_identity,
    ztunnel_identity,
)
from mesh.model import MeshSnapshot
from mesh.tokens import TokenTable

log = structlog.get_logger("k8s.controlplane")


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
        return any(w.meshed and w.identity == identity for w in snapshot.workloads_on_node(caller))


class ControlPlane:
    def __init__(
        self, authority: CertificateAuthority, *, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> None:
        self.authority = authority
        self.trust_domain = trust_domain
        self.tokens = TokenTable()  # one per node: the CA's and the config stream's proof
        self.snapshot: MeshSnapshot | None = None
        proxy_ids = frozenset({ztunnel_identity(trust_domain)})
        self.config = ConfigServer(node_token_authenticator(self.tokens, proxy_ids))
        self._held_for: list[str] = []

    def update(
        self, objects: Iterable[K8sObject], *, store: ObjectStore | None = None
    ) -> MeshSnapshot | None:
        """Translate ``objects`` and publish the result as the next version.

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
        objects = tuple(objects)
        version = (self.snapshot.version if self.snapshot else 0) + 1
        snapshot = translate(tuple(objects), trust_domain=self.trust_domain, version=version)
        if store is not None:
            write_conditions(store)
        if self.snapshot is not None and _same_content(self.snapshot, snapshot):
            return self.snapshot
        self.snapshot = snapshot
        self.config.publish(snapshot)
        log.info(
            "config_published",
            version=version,
            workloads=len(snapshot.workloads),
            services=len(snapshot.services),
            authorizations=len(snapshot.authorizations),
        )
        return snapshot

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

            async with trio.open_nursery() as nursery:
                ca_addrs = await nursery.start(
                    lambda task_status: serve_ca(
                        self.authority,
                        self.tokens,
                        NodeAuthorizer(self),
                        host=host,
                        port=ca_port,
                        identity=identity,
                        task_status=task_status,
                    )
                )
                config_addr = await nursery.start(
                    lambda task_status: serve_hbone(
                        self.config.handle,
                        certificate=current,
                        host=host,
                        port=config_port,
                        task_status=task_status,
                    )
                )
                log.info(
                    "control_plane_listening", host=host, ca_port=ca_addrs[0][1],
                    config_port=config_addr[1],
                )  # fmt: skip
                task_status.started((ca_addrs[0][1], config_addr[1]))


def policy_conditions(policy: AuthorizationPolicy) -> list[Condition]:
    """The conditions of an AuthorizationPolicy: whether ztunnel enforces it as written
    (:func:`k8s.translate.ztunnel_acceptance`) and, for one meant for a waypoint, that no
    waypoint enforces it yet."""
    accepted, reason, message = ztunnel_acceptance(policy)
    out = [Condition(CONDITION_ZTUNNEL_ACCEPTED, "True" if accepted else "False", reason, message)]
    if reason == "WaypointOnly":
        out.append(
            Condition(
                CONDITION_WAYPOINT_ACCEPTED, "False", "NoWaypoint",
                "ambit has no waypoint proxy yet, so nothing enforces this policy",
            )
        )  # fmt: skip
    return out


def write_conditions(store: ObjectStore) -> None:
    """Every object's conditions, computed from the objects as stored."""
    for entry in store.entries("AuthorizationPolicy"):
        policy = entry.obj
        assert isinstance(policy, AuthorizationPolicy)
        store.set_conditions(entry.ref, policy_conditions(policy), uid=policy.uid)


def _same_content(a: MeshSnapshot, b: MeshSnapshot) -> bool:
    return (a.workloads, a.services, a.authorizations, a.peer_authentications) == (
        b.workloads,
        b.services,
        b.authorizations,
        b.peer_authentications,
    )
