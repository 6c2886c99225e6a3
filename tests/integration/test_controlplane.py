"""The control plane on loopback, used the way a node's ztunnel uses it: node tokens for
the CA and the config stream, node authorization of identities, snapshots published
as objects change. No root, no namespaces."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ca import CertificateAuthority
from k8s import manifests
from k8s.controlplane import ControlPlane
from k8s.store import Condition, ObjectStore
from mesh.backoff import Backoff
from mesh.ca_client import CaClient, CaRefused
from mesh.certs import open_certificate_manager
from mesh.config_stream import ConfigClient
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId, control_plane_identity, ztunnel_identity
from mesh.model import MeshSnapshot
from tests.waiting import wait_until

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: web, image: web}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  nodeName: node-2
  serviceAccountName: db
  containers: [{name: db, image: db}]
"""

TD = "cluster.local"
WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")


def objects(extra: str = "") -> tuple[manifests.K8sObject, ...]:
    loaded = manifests.loads(MANIFEST + extra, "test.yaml")
    ips = {"web": "10.244.1.10", "db": "10.244.2.10", "waypoint": "10.244.1.11"}
    return tuple(o.with_ip(ips[o.name]) if isinstance(o, manifests.Pod) else o for o in loaded)


@asynccontextmanager
async def running_plane(extra: str = "") -> AsyncIterator[tuple[ControlPlane, int, int]]:
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD)
    plane.update(objects(extra))
    async with trio.open_nursery() as nursery:
        ca_port, config_port = await nursery.start(
            lambda task_status: plane.serve(
                "127.0.0.1", ca_port=0, config_port=0, task_status=task_status
            )
        )
        yield plane, ca_port, config_port
        nursery.cancel_scope.cancel()


def ca_client(plane: ControlPlane, port: int, node: str) -> CaClient:
    return CaClient(
        ("127.0.0.1", port), token=plane.tokens.token_for(node), bundle=plane.authority.trust_bundle
    )


async def test_a_node_gets_the_identities_of_its_own_pods_only() -> None:
    with trio.fail_after(20):
        async with running_plane() as (plane, ca_port, _):
            async with open_certificate_manager(ca_client(plane, ca_port, "node-1")) as certs:
                assert (await certs.fetch_now(WEB)).identity == WEB
                assert (await certs.fetch_now(ztunnel_identity(TD))).identity.namespace == (
                    "ambit-system"
                )
                with pytest.raises(CaRefused) as refused:
                    await certs.fetch_now(DB)  # db runs on node-2
                assert refused.value.status == 403
            wrong = CaClient(
                ("127.0.0.1", ca_port), token="guessed", bundle=plane.authority.trust_bundle
            )
            async with open_certificate_manager(wrong) as certs:
                with pytest.raises(CaRefused) as refused:
                    await certs.fetch_now(WEB)
                assert refused.value.status == 401


async def test_a_ztunnel_gets_the_snapshot_and_every_change_on_the_config_stream() -> None:
    received: list[MeshSnapshot] = []

    async def on_update(snapshot: MeshSnapshot) -> None:
        received.append(snapshot)

    with trio.fail_after(20):
        async with running_plane() as (plane, ca_port, config_port):
            client_ca = ca_client(plane, ca_port, "node-1")
            async with open_certificate_manager(client_ca) as certs:
                own = await certs.fetch_now(ztunnel_identity(TD))
                async with open_hbone_pool(lambda _s: own) as pool, trio.open_nursery() as n:
                    client = ConfigClient(
                        pool,
                        source=own.identity,
                        address=("127.0.0.1", config_port),
                        expected=control_plane_identity(TD),
                        node="node-1",
                        token=plane.tokens.token_for("node-1"),
                        on_update=on_update,
                        backoff=Backoff(initial=0.05, maximum=0.2),
                    )
                    await n.start(client.run)
                    assert {w.name for w in received[-1].workloads} == {"web", "db"}
                    # A change of objects reaches the proxy as the next version.
                    plane.update(objects(MANIFEST_POLICY))
                    await wait_until(lambda: received[-1].authorizations)
                    assert received[-1].version == received[0].version + 1
                    n.cancel_scope.cancel()


async def test_the_config_stream_refuses_another_nodes_token() -> None:
    async def on_update(snapshot: MeshSnapshot) -> None:
        raise AssertionError("no config may reach a proxy with another node's token")

    with trio.fail_after(20):
        async with (
            running_plane() as (plane, ca_port, config_port),
            open_certificate_manager(ca_client(plane, ca_port, "node-1")) as certs,
        ):
            own = await certs.fetch_now(ztunnel_identity(TD))
            async with open_hbone_pool(lambda _s: own) as pool, trio.open_nursery() as n:
                client = ConfigClient(
                    pool,
                    source=own.identity,
                    address=("127.0.0.1", config_port),
                    expected=control_plane_identity(TD),
                    node="node-2",  # claims node-2 with node-1's token
                    token=plane.tokens.token_for("node-1"),
                    on_update=on_update,
                    backoff=Backoff(initial=0.05, maximum=0.2),
                )
                n.start_soon(client.run)
                await wait_until(lambda: client.reconnects >= 2)
                assert client.snapshot is None
                n.cancel_scope.cancel()


MANIFEST_POLICY = """\
---
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: ["shop"]}}]}]
"""


async def test_nothing_is_published_until_every_kind_is_listed() -> None:
    """A source that lists kinds one by one: pods arrive before policies. Publishing then
    would be an allow-all mesh; the control plane waits for the last list."""
    deny = objects(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: deny-all, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n"
    )
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD)
    store = ObjectStore()
    published = []
    for kind in store.kinds:  # Namespace, ServiceAccount, Pod, ... AuthorizationPolicy ...
        assert not store.complete
        store.replace_kind(kind, [o for o in deny if type(o).__name__ == kind])
        snapshot = plane.update(store.objects(), store=store)
        published.append(snapshot)
    assert published[:-1] == [None] * (len(store.kinds) - 1)
    first = published[-1]
    assert first is not None
    assert plane.snapshot is first
    assert [a.key for a in first.authorizations] == ["shop/deny-all"]
    assert {w.name for w in first.workloads} == {"web", "db"}

    # A kind whose CRD appears closes the gate: the last good config stays published.
    store.unlist("PeerAuthentication")
    assert plane.update(store.objects(), store=store) is None
    assert plane.snapshot is first
    store.replace_kind("PeerAuthentication", [])
    assert plane.update(store.objects(), store=store) is first, "same content, same version"


POLICIES = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: plain, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: db}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


WAYPOINT_POD = """
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint, namespace: shop}
spec:
  nodeName: node-1
  serviceAccountName: waypoint
  containers: [{name: waypoint, image: waypoint}]
"""


async def test_a_waypoint_subscribes_with_the_certificate_the_ca_gave_it() -> None:
    """shop's waypoint runs on node-1: node-1 gets its certificate from the CA, and with it
    the waypoint gets shop's view, with the policies only a waypoint enforces; the
    ztunnel of node-1 does not get those."""
    waypoint_id = SpiffeId(TD, "shop", "waypoint")
    received: dict[SpiffeId, list[MeshSnapshot]] = {}
    with trio.fail_after(20):
        async with (
            running_plane(WAYPOINT_POD + POLICIES) as (plane, ca_port, config_port),
            open_certificate_manager(ca_client(plane, ca_port, "node-1")) as certs,
        ):
            own = await certs.fetch_now(ztunnel_identity(TD))
            waypoint = await certs.fetch_now(waypoint_id)
            certificates = {own.identity: own, waypoint_id: waypoint}

            def client(source: SpiffeId, **role: Any) -> ConfigClient:
                async def on_update(snapshot: MeshSnapshot) -> None:
                    received.setdefault(source, []).append(snapshot)

                return ConfigClient(
                    pool,
                    source=source,
                    address=("127.0.0.1", config_port),
                    expected=control_plane_identity(TD),
                    node="node-1",
                    on_update=on_update,
                    backoff=Backoff(initial=0.05, maximum=0.2),
                    **role,
                )

            async with (
                open_hbone_pool(lambda source: certificates[source]) as pool,
                trio.open_nursery() as n,
            ):
                await n.start(client(own.identity, token=plane.tokens.token_for("node-1")).run)
                await n.start(
                    client(waypoint_id, token=None, role="waypoint", namespace="shop").run
                )
                n.cancel_scope.cancel()
    waypoint_view, ztunnel_view = received[waypoint_id][-1], received[own.identity][-1]
    assert [a.name for a in waypoint_view.authorizations] == [
        "at-waypoint",
        "ext",
        "get-only",
        "plain",
    ]
    assert [a.name for a in ztunnel_view.authorizations] == ["ext", "get-only"]  # web's, node-1's


def published(objs: tuple[manifests.K8sObject, ...]) -> ObjectStore:
    """A store holding ``objs``, every kind listed, after a control plane published it
    (and wrote the objects' conditions)."""
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD)
    store = ObjectStore()
    for obj in objs:
        store.put(obj)
    for kind in store.unlisted():
        store.mark_listed(kind)
    assert plane.update(store.objects(), store=store) is not None
    return store


def conditions_of(store: ObjectStore, ref: tuple[str, str, str]) -> list[Condition]:
    """The conditions the control plane wrote on the object ``ref`` (which must be stored)."""
    entry = store.get(ref)
    assert entry is not None, ref
    return list(entry.conditions)


def test_each_policy_says_whether_ztunnel_enforces_it() -> None:
    store = published(objects(POLICIES))

    def conditions(name: str) -> dict[str, tuple[str, str]]:
        found = conditions_of(store, ("AuthorizationPolicy", "shop", name))
        return {c.type: (c.status, c.reason) for c in found}

    assert conditions("plain") == {"ambit.io/ZtunnelAccepted": ("True", "Accepted")}
    assert conditions("get-only") == {"ambit.io/ZtunnelAccepted": ("False", "L7AttributesIgnored")}
    assert conditions("ext") == {"ambit.io/ZtunnelAccepted": ("False", "UnsupportedValue")}
    assert conditions("at-waypoint") == {
        "ambit.io/ZtunnelAccepted": ("True", "WaypointOnly"),
        "ambit.io/WaypointAccepted": ("False", "TargetNotFound"),  # no Service db here
    }


BOUND = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.20, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.21, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-gateway, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unbound-service, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-gateway, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: elsewhere}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: [/audit]}}]}]
"""


def test_a_policy_for_a_waypoint_says_which_waypoint_it_is_bound_to() -> None:
    """Istio's WaypointAccepted: bound (the Gateway itself, a Service that uses it), or
    why not (a target that does not exist, a Service no waypoint serves, AUDIT without
    targetRefs); ztunnel's condition says the same policies are left to waypoints."""
    store = published(objects(POLICIES + BOUND))

    def waypoint(name: str) -> tuple[str, str, str]:
        every = conditions_of(store, ("AuthorizationPolicy", "shop", name))
        found = [c for c in every if c.type == "ambit.io/WaypointAccepted"]
        assert len(found) == 1, every
        return found[0].status, found[0].reason, found[0].message

    assert waypoint("on-gateway") == ("True", "Accepted", "bound to shop/waypoint")
    assert waypoint("at-waypoint") == ("True", "Accepted", "bound to shop/waypoint")
    assert waypoint("unbound-service")[:2] == ("False", "AncestorNotBound")
    assert "Service shop/web is not bound to a waypoint" in waypoint("unbound-service")[2]
    assert waypoint("other-gateway") == (
        "False", "TargetNotFound", "no such target: shop/elsewhere",
    )  # fmt: skip
    assert waypoint("audit")[:2] == ("False", "AncestorNotBound")
    plain = store.get(("AuthorizationPolicy", "shop", "plain"))
    assert plain is not None
    assert [c.type for c in plain.conditions] == ["ambit.io/ZtunnelAccepted"]


JWT_RULES = """
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: at-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ghost, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: ghost}]
  jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: sidecar-style, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]
"""


def test_a_request_authentication_says_which_waypoint_checks_it() -> None:
    """RequestAuthentication gets WaypointAccepted as AuthorizationPolicy does (only a
    waypoint checks JWTs): bound, a target that does not exist, or a selector (no waypoint
    takes it); it had no status at all."""
    store = published(objects(BOUND + JWT_RULES))

    def conditions(name: str) -> list[tuple[str, str, str, str]]:
        found = conditions_of(store, ("RequestAuthentication", "shop", name))
        return [(c.type, c.status, c.reason, c.message) for c in found]

    accepted = "ambit.io/WaypointAccepted"
    assert conditions("at-waypoint") == [(accepted, "True", "Accepted", "bound to shop/waypoint")]
    assert conditions("ghost") == [
        (accepted, "False", "TargetNotFound", "no such target: Service shop/ghost")
    ]
    [(kind, status, reason, message)] = conditions("sidecar-style")
    assert (kind, status, reason) == (accepted, "False", "AncestorNotBound")
    assert message.startswith("only a waypoint checks JWTs: give it targetRefs")


# --- changes, conflicts and coalescing (no sockets) -----------------------------------------


def test_a_conflict_is_logged_once_and_the_rest_is_published() -> None:
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD)

    def created(extra: str = "") -> tuple[manifests.K8sObject, ...]:
        return tuple(
            dataclasses.replace(o, creation_timestamp="2026-12-01T10:00:00Z")
            for o in objects(extra)
        )

    stale = manifests.Pod(
        name="stale",
        namespace="shop",
        node_name="node-1",
        pod_ip="10.244.1.10",  # web's address
        creation_timestamp="2026-12-01T10:00:05Z",
    )
    with capture_logs() as logs:
        plane.update((*created(), stale))
        plane.update((*created(MANIFEST_POLICY), stale))  # an unrelated change
        plane.update(created(MANIFEST_POLICY))  # the stale pod is deleted
    assert plane.snapshot is not None
    assert {w.name for w in plane.snapshot.workloads} == {"web", "db"}
    assert plane.snapshot.authorizations
    problems = [(e["event"], e["name"], e.get("reason")) for e in logs if "problem" in e["event"]]
    assert problems == [
        ("object_problem", "stale", "IPConflict"),
        ("object_problem", "web", "IPConflictKept"),
        ("object_problem_cleared", "stale", None),
        ("object_problem_cleared", "web", None),
    ]
    published = [e["version"] for e in logs if e["event"] == "config_published"]
    assert published == [1, 2]  # the stale pod's removal changed nothing in the model


async def test_store_changes_close_together_are_published_as_one_version(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD)
    store = ObjectStore()
    for kind in store.kinds:
        store.replace_kind(kind, [o for o in objects() if type(o).__name__ == kind])
    published: list[MeshSnapshot | None] = []

    async def after(snapshot: MeshSnapshot | None) -> None:
        published.append(snapshot)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: plane.serve_store(store, window=0.1, after=after))
            await wait_until(lambda: len(published) == 1)
            first = published[0]
            assert first is not None
            for obj in objects(MANIFEST_POLICY):  # a burst, 10 ms apart
                store.put(obj)
                await trio.sleep(0.01)
            store.delete(("Pod", "shop", "db"))
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert len(published) == 2, "the burst was translated once"
    last = published[-1]
    assert last is not None
    assert last.version == first.version + 1
    assert [w.name for w in last.workloads] == ["web"]
    assert [a.name for a in last.authorizations] == ["web"]


async def test_a_deployment_plugs_in_its_own_access_rules() -> None:
    """The Kubernetes source will bring its own authentication; local mode's node tokens
    are only the default. A control plane built with other rules follows them, for the CA
    and for the config stream."""
    from ca.auth import StaticAuthorizer, TokenAuthenticator
    from k8s.controlplane import Access

    refusals: list[tuple[str | None, str]] = []

    async def no_proxies(token: str | None, node: str, peer: SpiffeId) -> str | None:
        refusals.append((token, node))
        return "this deployment serves no proxies"

    access = Access(
        ca_authenticator=TokenAuthenticator({"sa-token": "kube:shop/web"}),
        ca_authorizer=StaticAuthorizer({"kube:shop/web": [str(WEB)]}),
        proxies=no_proxies,
    )
    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD, access=access)
    plane.update(objects())

    async def on_update(snapshot: MeshSnapshot) -> None:
        raise AssertionError("this deployment refuses every proxy")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            ca_port, config_port = await nursery.start(
                lambda task_status: plane.serve(
                    "127.0.0.1", ca_port=0, config_port=0, task_status=task_status
                )
            )
            bundle = plane.authority.trust_bundle
            ca = CaClient(("127.0.0.1", ca_port), token="sa-token", bundle=bundle)
            async with open_certificate_manager(ca) as certs:
                web = await certs.fetch_now(WEB)
                with pytest.raises(CaRefused) as refused:
                    await certs.fetch_now(DB)
                assert refused.value.status == 403
                async with open_hbone_pool(lambda _s: web) as pool, trio.open_nursery() as n:
                    client = ConfigClient(
                        pool, source=WEB, address=("127.0.0.1", config_port),
                        expected=control_plane_identity(TD), node="node-1", token="sa-token",
                        on_update=on_update, backoff=Backoff(initial=0.05, maximum=0.2),
                    )  # fmt: skip
                    n.start_soon(client.run)
                    await wait_until(lambda: len(refusals) >= 2)
                    assert refusals[0] == ("sa-token", "node-1")
                    assert client.snapshot is None
                    n.cancel_scope.cancel()
            node_token = CaClient(
                ("127.0.0.1", ca_port), token=plane.tokens.token_for("node-1"), bundle=bundle
            )
            async with open_certificate_manager(node_token) as certs:
                with pytest.raises(CaRefused) as refused:
                    await certs.fetch_now(ztunnel_identity(TD))
                assert refused.value.status == 401, "node tokens are not this deployment's"
            nursery.cancel_scope.cancel()


GATEWAY_API = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: ambit.io/mesh-controller}  # Istio's would make its Gateways Istio's
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: someone-else}
spec: {controllerName: example.com/gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-missing, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orphan, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: nowhere}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""


def test_gateway_api_objects_get_gateway_api_conditions() -> None:
    store = published(objects(GATEWAY_API))

    def conditions(kind: str, namespace: str, name: str) -> dict[str, tuple[str, str]]:
        return {c.type: (c.status, c.reason) for c in conditions_of(store, (kind, namespace, name))}

    assert conditions("GatewayClass", "", "istio-waypoint") == {"Accepted": ("True", "Accepted")}
    assert conditions("GatewayClass", "", "someone-else") == {}, "not ours: no status"
    assert conditions("Gateway", "shop", "waypoint") == {
        "Accepted": ("True", "Accepted"),
        "Programmed": ("False", "Pending"),  # no waypoint proxy runs for it
    }
    assert conditions("HTTPRoute", "shop", "to-missing") == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("False", "BackendNotFound"),
    }
    assert conditions("HTTPRoute", "shop", "orphan") == {
        "Accepted": ("False", "NoMatchingParent"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }


async def test_a_drain_ends_config_streams_refuses_newcomers_and_returns() -> None:
    """SIGTERM's path: the control plane stops accepting, says GOAWAY and ends every
    proxy's stream (the proxy keeps its config and tries again), then serve() returns."""
    received: list[MeshSnapshot] = []

    async def on_update(snapshot: MeshSnapshot) -> None:
        received.append(snapshot)

    plane = ControlPlane(CertificateAuthority.create(), trust_domain=TD)
    plane.update(objects())
    with trio.fail_after(20), capture_logs() as logs:
        async with trio.open_nursery() as outer:
            served = trio.Event()

            async def serve(task_status: trio.TaskStatus[tuple[int, int]]) -> None:
                await plane.serve("127.0.0.1", ca_port=0, config_port=0, task_status=task_status)
                served.set()

            ca_port, config_port = await outer.start(serve)
            async with open_certificate_manager(ca_client(plane, ca_port, "node-1")) as certs:
                own = await certs.fetch_now(ztunnel_identity(TD))
                async with open_hbone_pool(lambda _s: own) as pool, trio.open_nursery() as n:
                    client = ConfigClient(
                        pool, source=own.identity, address=("127.0.0.1", config_port),
                        expected=control_plane_identity(TD), node="node-1",
                        token=plane.tokens.token_for("node-1"), on_update=on_update,
                        backoff=Backoff(initial=0.05, maximum=0.2),
                    )  # fmt: skip
                    await n.start(client.run)
                    assert received
                    await plane.drain(2.0)
                    assert plane.draining
                    with trio.fail_after(1):
                        await served.wait()  # serve() returns once drained
                    await wait_until(lambda: client.reconnects >= 1)
                    assert client.snapshot is not None, "the proxy keeps its config"
                    with pytest.raises(OSError, match="all attempts to connect"):
                        await trio.open_tcp_stream("127.0.0.1", ca_port)  # nobody listens
                    n.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    assert "control_plane_draining" in events
    [drained] = [e for e in logs if e["event"] == "control_plane_drained"]
    assert drained["cut_at_deadline"] is False
