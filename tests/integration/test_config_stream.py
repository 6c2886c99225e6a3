"""The config stream between the control plane and a proxy, over real HBONE."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from k8s.config_server import ConfigServer, node_token_authenticator
from mesh.backoff import Backoff
from mesh.config_stream import ConfigClient, ConfigRejected
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot
from mesh.tokens import TokenTable
from tests.builders import service, snapshot, workload
from tests.integration.hbone_support import start_server
from tests.integration.relay import Relay
from tests.pki import Pki
from tests.waiting import wait_until

CP_ID = SpiffeId("cluster.local", "ambit-system", "ambit-controlplane")
ZTUNNEL_ID = SpiffeId("cluster.local", "ambit-system", "ztunnel")
FAST = Backoff(initial=0.05, maximum=0.2)
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def versioned(version: int, pods: int = 2) -> MeshSnapshot:
    resources = [workload(f"pod-{i}", ip=f"10.244.0.{10 + i}") for i in range(pods)]
    return snapshot(*resources, service("web", vip="10.96.0.10"), version=version)


class Proxy:
    """A config client as a ztunnel runs it, recording every snapshot it applied."""

    def __init__(self) -> None:
        self.applied: list[MeshSnapshot] = []
        self.gate: trio.Event | None = None
        self.reject_version: int | None = None

    async def on_update(self, new: MeshSnapshot) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if new.version == self.reject_version:
            self.reject_version = None
            raise ConfigRejected("cannot program this version")
        self.applied.append(new)


@asynccontextmanager
async def running(
    root: Pki,
    server: ConfigServer,
    proxy: Proxy,
    *,
    token: str = "node-1-token",
    identity: SpiffeId = ZTUNNEL_ID,
    via_relay: bool = False,
) -> AsyncIterator[tuple[ConfigClient, Relay | None]]:
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, server.handle, root.issue(CP_ID))
        relay = None
        if via_relay:
            relay = Relay(address)
            address = await nursery.start(relay.serve)
        cert = root.issue(identity)
        async with open_hbone_pool(lambda _s: cert) as pool:
            client = ConfigClient(
                pool,
                source=identity,
                address=address,
                expected=CP_ID,
                node="node-1",
                token=token,
                on_update=proxy.on_update,
                backoff=FAST,
            )
            nursery.start_soon(client.run)
            yield client, relay
            nursery.cancel_scope.cancel()


def make_server(**kwargs: Any) -> ConfigServer:
    auth = node_token_authenticator(TokenTable({"node-1-token": "node-1"}), frozenset({ZTUNNEL_ID}))
    return ConfigServer(auth, **kwargs)


async def test_snapshot_then_deltas_arrive_in_order_and_are_acknowledged(root: Pki) -> None:
    server = make_server()
    server.publish(versioned(1))
    proxy = Proxy()
    with trio.fail_after(10):
        async with running(root, server, proxy) as (client, _):
            await wait_until(lambda: proxy.applied)
            for version in range(2, 6):
                server.publish(versioned(version, pods=version + 1))
            await wait_until(lambda: proxy.applied[-1].version == 5)
            await wait_until(lambda: server.nodes()[0].acked_version == 5)
            assert client.snapshot == versioned(5, pods=6)
    assert [s.version for s in proxy.applied] == [1, 2, 3, 4, 5]
    assert proxy.applied[-1].workload_by_ip("10.244.0.15") is not None


async def test_a_proxy_waits_for_the_first_snapshot(root: Pki) -> None:
    server = make_server()
    proxy = Proxy()
    with trio.fail_after(10):
        async with running(root, server, proxy):
            await wait_until(lambda: server.nodes() and server.nodes()[0].connected)
            assert server.nodes()[0].address == "127.0.0.1"  # where the observer scrapes it
            assert proxy.applied == []
            server.publish(versioned(7))
            await wait_until(lambda: [s.version for s in proxy.applied] == [7])


@pytest.mark.parametrize(
    ("token", "identity", "reason"),
    [
        ("stolen", ZTUNNEL_ID, "no valid token for node"),
        ("node-1-token", SpiffeId("cluster.local", "default", "client"), "not a proxy identity"),
    ],
)
async def test_unauthenticated_proxies_are_refused(
    root: Pki, logs: Logs, token: str, identity: SpiffeId, reason: str
) -> None:
    server = make_server()
    server.publish(versioned(1))
    proxy = Proxy()
    with trio.fail_after(10):
        async with running(root, server, proxy, token=token, identity=identity) as (client, _):
            await wait_until(lambda: client.reconnects >= 2)
    assert proxy.applied == []
    refusals = [e for e in logs if e["event"] == "config_stream_refused"]
    assert refusals
    assert reason in refusals[0]["reason"]
    lost = [e for e in logs if e["event"] == "config_stream_lost"]
    assert "403" in lost[0]["reason"]


async def test_the_last_config_survives_a_dead_control_plane_and_resyncs(root: Pki) -> None:
    server = make_server()
    server.publish(versioned(1))
    proxy = Proxy()
    with trio.fail_after(15):
        async with running(root, server, proxy, via_relay=True) as (client, relay):
            assert relay is not None
            await wait_until(lambda: proxy.applied)
            relay.cut()  # the control plane is gone
            await wait_until(lambda: client.reconnects >= 1 and not client.connected)
            assert client.snapshot == versioned(1)  # still serving the last good config
            server.publish(versioned(2, pods=3))
            server.publish(versioned(3, pods=4))
            await wait_until(lambda: client.snapshot is not None and client.snapshot.version == 3)
    assert client.snapshot == versioned(3, pods=4)


async def test_a_restarted_control_plane_numbering_afresh_is_sent_whole(root: Pki) -> None:
    """Each control-plane process counts versions from 1: a proxy holding the old
    process's v1 is sent the new process's v1 whole (another epoch), not nothing, and
    later deltas apply to what the proxy really holds."""
    old, new = make_server(), make_server()
    old.publish(versioned(1, pods=2))
    new.publish(versioned(1, pods=5))  # same version, other content
    proxy = Proxy()
    with trio.fail_after(15):
        async with (
            trio.open_nursery() as nursery,
            running(root, old, proxy, via_relay=True) as (client, relay),
        ):
            assert relay is not None
            await wait_until(lambda: proxy.applied)
            relay.target = await start_server(nursery, new.handle, root.issue(CP_ID))
            # The control plane "restarted" behind the same address.
            relay.cut()
            await wait_until(lambda: len(proxy.applied) == 2)
            assert client.snapshot == versioned(1, pods=5)
            new.publish(versioned(2, pods=6))
            await wait_until(lambda: client.snapshot == versioned(2, pods=6))
            nursery.cancel_scope.cancel()
    assert client.epoch == new.epoch != old.epoch


async def test_a_reconnecting_proxy_gets_only_what_changed(root: Pki, logs: Logs) -> None:
    server = make_server()
    server.publish(versioned(1))
    proxy = Proxy()
    with trio.fail_after(15):
        async with running(root, server, proxy, via_relay=True) as (client, relay):
            assert relay is not None
            # v1 applied and acknowledged: the client holds it and will name it when it
            # reconnects (proxy.applied alone is set before the client's own bookkeeping).
            await wait_until(lambda: any(n.acked_version == 1 for n in server.nodes()))
            relay.freeze()  # stall this connection, then drop it
            relay.cut()
            server.publish(versioned(2, pods=3))
            # Its log line, not client.snapshot: the client logs after sending its ack.
            await wait_until(
                lambda: any(e["event"] == "config_applied" and e["version"] == 2 for e in logs)
            )
            assert client.snapshot is not None
            assert client.snapshot.version == 2
    kinds = [e["kind"] for e in logs if e["event"] == "config_applied"]
    assert kinds == ["snapshot", "delta"]


def crowd(version: int) -> MeshSnapshot:
    """Every other version adds 3,000 pods: each delta is about a megabyte."""
    pods = 3000 if version % 2 else 0
    resources = [workload(f"p-{i}", ip=f"10.244.{i // 250}.{i % 250 + 1}") for i in range(pods)]
    return snapshot(*resources, version=version)


async def test_a_lagging_proxy_is_cut_off_and_resynchronises(root: Pki, logs: Logs) -> None:
    """A proxy that stops reading fills its HBONE window, then its queue: it is cut
    off (bounded memory in the control plane) and catches up when it reconnects."""
    server = make_server(queue_limit=2)
    server.publish(crowd(1))
    proxy = Proxy()
    with trio.fail_after(30):
        async with running(root, server, proxy) as (client, _):
            await wait_until(lambda: proxy.applied)
            proxy.gate = trio.Event()  # the proxy stops applying updates
            for version in range(2, 30):  # about 13 MB: past the 4 MiB window and the queue
                server.publish(crowd(version))
                await trio.sleep(0.05)
            await wait_until(lambda: any(e["event"] == "config_subscriber_lagging" for e in logs))
            proxy.gate.set()
            await wait_until(lambda: client.snapshot is not None and client.snapshot.version == 29)
    assert client.snapshot == crowd(29)


async def test_a_rejected_update_is_nacked_and_followed_by_a_full_snapshot(
    root: Pki, logs: Logs
) -> None:
    server = make_server()
    server.publish(versioned(1))
    proxy = Proxy()
    proxy.reject_version = 2
    with trio.fail_after(15):
        async with running(root, server, proxy) as (client, _):
            await wait_until(lambda: proxy.applied)
            server.publish(versioned(2, pods=3))
            await wait_until(lambda: client.snapshot is not None and client.snapshot.version == 2)
            # The client logs what it applied after it took it: wait for the line counted.
            await wait_until(lambda: sum(e["event"] == "config_applied" for e in logs) >= 2)
    nacks = [e for e in logs if e["event"] == "config_rejected_by_proxy"]
    assert nacks[0]["reason"] == "cannot program this version"
    kinds = [e["kind"] for e in logs if e["event"] == "config_applied"]
    assert kinds == ["snapshot", "snapshot"]
