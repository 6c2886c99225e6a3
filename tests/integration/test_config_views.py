"""Each proxy gets its own view on the config stream, over real HBONE with real
certificates: a ztunnel its node's, a waypoint its namespace's; deltas per view; and who
may ask for which view."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from k8s.config_server import (
    ConfigServer,
    ConfigServerStatistics,
    node_token_authenticator,
    waypoint_authorizer,
)
from mesh.backoff import Backoff
from mesh.config_stream import ConfigClient, MessageStream, Role
from mesh.hbone import HboneStreamRefused
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId
from mesh.model import Delta, MeshSnapshot, Resource
from mesh.reason import Reason
from mesh.tokens import TokenTable
from tests.builders import allow, deny, rule, service, snapshot, source, waypoint_ref, workload
from tests.integration.hbone_support import start_server
from tests.pki import Pki
from tests.waiting import wait_until

TD = "cluster.local"
CP_ID = SpiffeId(TD, "ambit-system", "ambit-controlplane")
ZTUNNEL_ID = SpiffeId(TD, "ambit-system", "ztunnel")
SHOP_WAYPOINT = SpiffeId(TD, "shop", "waypoint")
TOKENS = {"node-1": "token-1", "node-2": "token-2"}
FAST = Backoff(initial=0.05, maximum=0.2)
Logs = list[MutableMapping[str, Any]]

WEB = workload("web", "shop", ip="10.244.1.10", node="node-1")
PROBE = workload("probe", "tools", ip="10.244.1.11", node="node-1")
DB = workload("db", "shop", ip="10.244.2.10", node="node-2")
WAYPOINT = workload("waypoint", "shop", ip="10.244.2.11", node="node-2", labels={})
FROM_SHOP = rule([source(namespaces=["shop"])])


def mesh(version: int, *changes: Resource) -> MeshSnapshot:
    """shop/web and tools/probe on node-1, shop/db and shop's waypoint on node-2, a policy
    selecting each of web, db and probe, one for shop's waypoint only; ``changes`` replace
    the entries with their keys, or are added."""
    entries: list[Resource] = [
        WEB,
        PROBE,
        DB,
        WAYPOINT,
        service("web", "shop", vip="10.96.0.10", backends=[WEB]),
        service("db", "shop", vip="10.96.0.11", backends=[DB]),
        allow("web-only", FROM_SHOP, namespace="shop", selector={"app": "web"}),
        deny("db-only", FROM_SHOP, namespace="shop", selector={"app": "db"}),
        allow("probe", FROM_SHOP, namespace="tools", selector={"app": "probe"}),
        allow("at-waypoint", FROM_SHOP, namespace="shop", targets=[waypoint_ref()]),
    ]
    replaced = {(r.kind, r.key): r for r in changes}
    entries = [replaced.pop((r.kind, r.key), r) for r in entries]
    return snapshot(*entries, *replaced.values(), version=version)


def policy_keys(snap: MeshSnapshot | None) -> list[str]:
    assert snap is not None
    return [a.key for a in snap.authorizations]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def applied(logs: Logs, node: str) -> list[tuple[str, int]]:
    """(kind, version) of every update the proxy of ``node`` applied, in order."""
    return [
        (e["kind"], e["version"])
        for e in logs
        if e["event"] == "config_applied" and e["node"] == node
    ]


def make_server(**kwargs: Any) -> ConfigServer:
    tokens = TokenTable({token: node for node, token in TOKENS.items()})
    return ConfigServer(node_token_authenticator(tokens, frozenset({ZTUNNEL_ID})), **kwargs)


class Proxy:
    """Records every snapshot a config client applied."""

    def __init__(self) -> None:
        self.applied: list[MeshSnapshot] = []

    async def on_update(self, new: MeshSnapshot) -> None:
        self.applied.append(new)

    @property
    def versions(self) -> list[int]:
        return [s.version for s in self.applied]


@asynccontextmanager
async def serving(root: Pki, server: ConfigServer) -> AsyncIterator[tuple[str, int]]:
    async with trio.open_nursery() as nursery:
        yield await start_server(nursery, server.handle, root.issue(CP_ID))
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def subscribed(
    root: Pki,
    address: tuple[str, int],
    proxy: Proxy,
    *,
    node: str = "node-1",
    identity: SpiffeId = ZTUNNEL_ID,
    token: str | None = None,
    role: Role = "ztunnel",
    namespace: str | None = None,
) -> AsyncIterator[ConfigClient]:
    """A config client as a proxy runs it (a ztunnel with its node's token by default)."""
    cert = root.issue(identity)
    if role == "ztunnel" and token is None:
        token = TOKENS[node]
    async with open_hbone_pool(lambda _s: cert) as pool, trio.open_nursery() as nursery:
        client = ConfigClient(
            pool,
            source=identity,
            address=address,
            expected=CP_ID,
            node=node,
            token=token,
            on_update=proxy.on_update,
            backoff=FAST,
            role=role,
            namespace=namespace,
        )
        nursery.start_soon(client.run)
        yield client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw(
    root: Pki, address: tuple[str, int], identity: SpiffeId, headers: Sequence[tuple[str, str]]
) -> AsyncIterator[MessageStream]:
    """One CONNECT to the config stream with ``headers``, its messages read and written by
    the test; raises :class:`HboneStreamRefused` if it is refused."""
    cert = root.issue(identity)
    async with open_hbone_pool(lambda _s: cert) as pool:
        stream = await pool.connect(
            source=identity,
            address=address,
            authority=f"{address[0]}:{address[1]}",
            expected=[CP_ID],
            headers=headers,
        )
        async with stream:
            yield MessageStream(stream)


def ztunnel_headers(node: str, token: str) -> list[tuple[str, str]]:
    """A ztunnel's headers as proxies older than roles send them: no ``ambit-role``."""
    return [("ambit-node", node), ("authorization", f"Bearer {token}")]


async def hello(
    messages: MessageStream, node: str, version: int | None, epoch: str | None = None
) -> None:
    """A ztunnel's hello, without a role as older proxies send it."""
    await messages.send({"type": "hello", "node": node, "version": version, "epoch": epoch})


# --- a ztunnel's view --------------------------------------------------------------------------


async def test_a_ztunnel_gets_its_nodes_policies_and_not_those_of_another_nodes_pods(
    root: Pki,
) -> None:
    server = make_server()
    server.publish(mesh(1))
    node_1, node_2 = Proxy(), Proxy()
    with trio.fail_after(10):
        async with (
            serving(root, server) as address,
            subscribed(root, address, node_1, node="node-1"),
            subscribed(root, address, node_2, node="node-2"),
        ):
            await wait_until(lambda: node_1.applied and node_2.applied)
    assert policy_keys(node_1.applied[-1]) == ["shop/web-only", "tools/probe"]
    assert policy_keys(node_2.applied[-1]) == ["shop/db-only"]
    # both still know every pod and Service: they may dial any of them
    for proxy in (node_1, node_2):
        assert [w.name for w in proxy.applied[-1].workloads] == ["db", "waypoint", "web", "probe"]
        assert [s.name for s in proxy.applied[-1].services] == ["db", "web"]


async def test_a_change_of_node_2s_policy_reaches_node_2_only(root: Pki, logs: Logs) -> None:
    server = make_server()
    server.publish(mesh(1))
    node_1, node_2 = Proxy(), Proxy()
    stricter = deny("db-only", rule([source(namespaces=["tools"])]), namespace="shop",
                    selector={"app": "db"})  # fmt: skip
    with trio.fail_after(10):
        async with (
            serving(root, server) as address,
            subscribed(root, address, node_1, node="node-1"),
            subscribed(root, address, node_2, node="node-2"),
        ):
            await wait_until(lambda: node_1.applied and node_2.applied)
            server.publish(mesh(2, stricter))
            await wait_until(lambda: node_2.versions == [1, 2])
            # A change both views see: on one stream it comes after anything sent for v2.
            server.publish(mesh(3, stricter, workload("new", "shop", ip="10.244.2.12")))
            await wait_until(lambda: node_1.versions[-1] == 3 and node_2.versions[-1] == 3)
            await wait_until(lambda: [s.acked_version for s in server.nodes()] == [3, 3])
    assert node_1.versions == [1, 3], "node-1's view did not change at v2: nothing was sent"
    assert applied(logs, "node-1") == [("snapshot", 1), ("delta", 3)]
    assert applied(logs, "node-2") == [("snapshot", 1), ("delta", 2), ("delta", 3)]
    db_only = node_2.applied[1].authorizations[0]
    assert db_only.rules[0].sources[0].namespaces == ("tools",)


async def test_a_ztunnel_whose_view_did_not_change_is_up_to_date_at_its_own_version(
    root: Pki,
) -> None:
    server = make_server()
    server.publish(mesh(1))
    node_1 = Proxy()
    with trio.fail_after(10):
        async with serving(root, server) as address, subscribed(root, address, node_1):
            await wait_until(lambda: server.nodes() and server.nodes()[0].acked_version == 1)
            server.publish(mesh(2, deny("db-only", namespace="shop", selector={"app": "db"})))
            [status] = server.nodes()
            assert (status.version, status.acked_version) == (1, 1)  # in step, at v1


async def test_a_ztunnel_reconnecting_with_a_version_gets_only_its_views_deltas_since(
    root: Pki,
) -> None:
    server = make_server()
    server.publish(mesh(1))
    from_tools = rule([source(namespaces=["tools"])])
    web_v2 = allow("web-only", from_tools, namespace="shop", selector={"app": "web"})
    headers = ztunnel_headers("node-1", "token-1")
    with trio.fail_after(10):
        async with serving(root, server) as address:
            async with raw(root, address, ZTUNNEL_ID, headers) as messages:
                await hello(messages, "node-1", None)
                first = await messages.receive()
                assert first is not None
                assert first["type"] == "snapshot"
                await messages.send({"type": "ack", "version": 1})
            await wait_until(lambda: server.statistics().subscribers == 0)
            # While node-1 is away: node-2's policy changes, node-1's too, node-2's back.
            server.publish(mesh(2, deny("db-only", namespace="shop", selector={"app": "db"})))
            server.publish(mesh(3, web_v2))
            server.publish(mesh(4, web_v2))
            async with raw(root, address, ZTUNNEL_ID, headers) as messages:
                await hello(messages, "node-1", 1, server.epoch)
                message = await messages.receive()
                server.publish(mesh(5, web_v2, workload("new", "shop", ip="10.244.2.12")))
                following = await messages.receive()
    assert message is not None
    assert message["type"] == "delta"
    delta = Delta.from_json(message["delta"])
    assert (delta.from_version, delta.to_version) == (1, 4)  # one step to now, its part only
    assert (delta.upserts, delta.removes) == ((web_v2,), ())
    assert following is not None
    assert following["type"] == "delta"
    assert Delta.from_json(following["delta"]).from_version == 4


async def test_a_hello_from_another_epoch_or_none_gets_the_whole_view(root: Pki) -> None:
    server = make_server()
    server.publish(mesh(1))
    web = allow("web-only", rule([source(namespaces=["tools"])]), namespace="shop",
                selector={"app": "web"})  # fmt: skip
    headers = ztunnel_headers("node-1", "token-1")
    seen = []

    async def first_message(address: tuple[str, int], epoch: str | None) -> None:
        async with raw(root, address, ZTUNNEL_ID, headers) as messages:
            await hello(messages, "node-1", 1, epoch)
            message = await messages.receive()
            assert message is not None
            seen.append((message["type"], message["epoch"]))

    with trio.fail_after(10):
        async with serving(root, server) as address:
            await first_message(address, None)  # no epoch: v1 whole
            server.publish(mesh(2, web))  # node-1's view changes: v1 -> v2 is a delta
            await first_message(address, "another-process")  # its v1 is not ours
            await first_message(address, server.epoch)  # ours: the delta
    assert seen == [
        ("snapshot", server.epoch), ("snapshot", server.epoch), ("delta", server.epoch),
    ]  # fmt: skip


# --- a waypoint's view -------------------------------------------------------------------------


async def test_a_waypoint_of_shop_gets_shops_policies_including_those_for_waypoints(
    root: Pki,
) -> None:
    server = make_server(authorize_waypoint=waypoint_authorizer())
    server.publish(mesh(1))
    waypoint = Proxy()
    with trio.fail_after(10):
        async with (
            serving(root, server) as address,
            subscribed(
                root, address, waypoint, identity=SHOP_WAYPOINT, role="waypoint", namespace="shop"
            ),
        ):
            await wait_until(lambda: waypoint.applied)
            server.publish(mesh(2, allow("probe", namespace="tools")))  # not shop's: unchanged
            server.publish(mesh(3, allow("new", namespace="shop")))
            await wait_until(lambda: waypoint.versions[-1] == 3)
            [status] = server.proxies()
            assert (status.role, status.name, status.acked_version) == ("waypoint", "shop", 3)
    assert waypoint.versions == [1, 3]
    assert policy_keys(waypoint.applied[0]) == ["shop/at-waypoint", "shop/db-only", "shop/web-only"]
    assert "shop/new" in policy_keys(waypoint.applied[-1])
    assert [w.name for w in waypoint.applied[0].workloads] == ["db", "waypoint", "web"]
    at_waypoint = waypoint.applied[0].authorizations[0]
    assert at_waypoint.for_waypoint
    assert at_waypoint.target_refs == (waypoint_ref(),)


async def test_a_waypoint_named_in_the_authorizers_set_is_one(root: Pki) -> None:
    server = make_server(authorize_waypoint=waypoint_authorizer({"shop-gateway"}))
    server.publish(mesh(1))
    waypoint = Proxy()
    gateway = SpiffeId(TD, "shop", "shop-gateway")
    with trio.fail_after(10):
        async with (
            serving(root, server) as address,
            subscribed(
                root, address, waypoint, identity=gateway, role="waypoint", namespace="shop"
            ),
        ):
            await wait_until(lambda: waypoint.applied)
    assert "shop/at-waypoint" in policy_keys(waypoint.applied[0])


# --- who may ask for which view ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "headers", "status", "reason"),
    [
        pytest.param(
            ZTUNNEL_ID, ztunnel_headers("node-2", "token-1"), 403, Reason.NOT_AUTHORIZED,
            id="node-1's token asking for node-2",
        ),
        pytest.param(
            ZTUNNEL_ID, [("ambit-role", "ztunnel"), ("ambit-node", "node-2")], 401,
            Reason.UNAUTHENTICATED, id="a ztunnel without a token",
        ),
        pytest.param(
            SHOP_WAYPOINT, [("ambit-role", "waypoint"), ("ambit-namespace", "tools")], 403,
            Reason.NOT_AUTHORIZED, id="shop's waypoint asking for tools",
        ),
        pytest.param(
            SpiffeId(TD, "shop", "web"), [("ambit-role", "waypoint"), ("ambit-namespace", "shop")],
            403, Reason.NOT_AUTHORIZED, id="a workload of shop that is no waypoint",
        ),
        pytest.param(
            ZTUNNEL_ID, [("ambit-role", "waypoint"), ("ambit-namespace", "shop")], 403,
            Reason.NOT_AUTHORIZED, id="a ztunnel asking for a waypoint's view",
        ),
        pytest.param(
            SHOP_WAYPOINT, [("ambit-role", "ztunnel"), *ztunnel_headers("node-1", "token-1")],
            403, Reason.NOT_AUTHORIZED, id="a waypoint with a stolen node token",
        ),
        pytest.param(
            SHOP_WAYPOINT, [("ambit-role", "waypoint")], 400, Reason.BAD_REQUEST,
            id="a waypoint naming no namespace",
        ),
        pytest.param(
            ZTUNNEL_ID, [("ambit-role", "sidecar"), *ztunnel_headers("node-1", "token-1")], 400,
            Reason.BAD_REQUEST, id="an unknown role",
        ),
    ],
)  # fmt: skip
async def test_a_caller_asking_for_a_view_it_may_not_have_is_refused(
    root: Pki,
    logs: Logs,
    identity: SpiffeId,
    headers: list[tuple[str, str]],
    status: int,
    reason: Reason,
) -> None:
    server = make_server()
    server.publish(mesh(1))
    with trio.fail_after(10):
        async with serving(root, server) as address:
            with pytest.raises(HboneStreamRefused) as refused:
                async with raw(root, address, identity, headers):
                    pass
    assert (refused.value.status, refused.value.reason) == (status, reason)
    [logged] = [e for e in logs if e["event"] == "config_stream_refused"]
    assert logged["src_identity"] == str(identity)
    assert server.statistics().views == 0


async def test_a_hello_that_contradicts_the_headers_gets_nothing(root: Pki, logs: Logs) -> None:
    server = make_server()
    server.publish(mesh(1))
    headers = [("ambit-role", "waypoint"), ("ambit-namespace", "shop"), ("ambit-node", "node-2")]
    with trio.fail_after(10):
        async with (
            serving(root, server) as address,
            raw(root, address, SHOP_WAYPOINT, headers) as messages,
        ):
            await messages.send(
                {"type": "hello", "node": "node-2", "role": "waypoint", "namespace": "tools"}
            )
            assert await messages.receive() is None  # the server ended the stream
    [refused] = [e for e in logs if e["event"] == "config_stream_refused"]
    assert refused["reason"].startswith("bad or no hello")
    assert server.statistics().views == 0


# --- bounded state -----------------------------------------------------------------------------


async def test_views_without_subscribers_are_kept_up_to_a_limit(root: Pki) -> None:
    server = make_server(idle_views=1)
    server.publish(mesh(1))
    node_1, node_2 = Proxy(), Proxy()
    with trio.fail_after(15):
        async with serving(root, server) as address:
            async with subscribed(root, address, node_2, node="node-2"):
                async with subscribed(root, address, node_1, node="node-1"):
                    await wait_until(lambda: node_1.applied and node_2.applied)
                    assert server.statistics() == ConfigServerStatistics(2, 2, 0)
                # node-1 left: its view is kept for its return, idle
                await wait_until(lambda: server.statistics() == ConfigServerStatistics(1, 2, 1))
            # node-2 left too: one idle view at most, so node-1's, idle longer, is dropped
            await wait_until(lambda: server.statistics() == ConfigServerStatistics(0, 1, 1))
            server.publish(mesh(2, deny("db-only", namespace="shop", selector={"app": "db"})))
            for node, token, kind in (
                ("node-2", "token-2", "delta"),
                ("node-1", "token-1", "snapshot"),
            ):
                async with raw(root, address, ZTUNNEL_ID, ztunnel_headers(node, token)) as messages:
                    await hello(messages, node, 1, server.epoch)
                    message = await messages.receive()
                    assert message is not None
                    # node-2's view was kept: the delta to v2; node-1's was not: all of v2
                    assert (node, message["type"]) == (node, kind)
