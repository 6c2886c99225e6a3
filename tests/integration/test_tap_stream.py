"""Tap end to end in one process: a proxy's ConfigClient over real HBONE and mutual TLS to
a real ConfigServer, the control plane's tap API over real TLS, and ``ambit tap``'s client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from k8s.config_server import ConfigServer, node_token_authenticator
from k8s.tap_server import TokenTapAuthenticator, serve_tap
from mesh.backoff import Backoff
from mesh.config_stream import ConfigClient
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot
from mesh.tap import ProxyTap, TapEvent
from mesh.tap_client import TapClientError, tap
from mesh.tokens import TokenTable
from tests.builders import snapshot, workload
from tests.integration.hbone_support import start_server
from tests.integration.relay import Relay
from tests.pki import Pki
from tests.waiting import wait_until

CP_ID = SpiffeId("cluster.local", "ambit-system", "ambit-controlplane")
ZTUNNEL_ID = SpiffeId("cluster.local", "ambit-system", "ztunnel")
FAST = Backoff(initial=0.05, maximum=0.2)
TAP_TOKEN = "tap-token"


class Plane:
    def __init__(
        self,
        server: ConfigServer,
        config_address: tuple[str, int],
        tap_address: tuple[str, int],
        root: Pki,
    ) -> None:
        self.server = server
        self.config_address = config_address
        self.tap_address = tap_address
        self.root = root

    async def tap(
        self, query: dict[str, str], *, want: int, token: str | None = TAP_TOKEN
    ) -> list[dict[str, Any]]:
        """``want`` lines after ``started``, as ``ambit tap`` reads them."""
        lines: list[dict[str, Any]] = []

        def on_line(line: dict[str, Any]) -> bool:
            lines.append(line)
            return len(lines) < want + 1

        await tap(self.tap_address, identity=CP_ID, bundle=self.root.bundle, token=token,
                  query=query, on_line=on_line)  # fmt: skip
        assert lines[0]["type"] == "started"
        return lines[1:]


async def noop(_snapshot: MeshSnapshot) -> None:
    pass


@asynccontextmanager
async def plane(root: Pki) -> AsyncIterator[tuple[Plane, trio.Nursery]]:
    auth = node_token_authenticator(TokenTable({"node-1-token": "node-1"}), frozenset({ZTUNNEL_ID}))
    server = ConfigServer(auth)
    server.publish(snapshot(workload("client", "demo", ip="10.244.0.10"), version=1))
    cp_cert = root.issue(CP_ID)
    authenticator = TokenTapAuthenticator(TokenTable({TAP_TOKEN: "admin"}))
    async with trio.open_nursery() as nursery:
        config = await start_server(nursery, server.handle, cp_cert)
        tap_address = await nursery.start(
            lambda task_status: serve_tap(server.taps, authenticator, certificate=lambda: cp_cert,
                                          host="127.0.0.1", port=0, task_status=task_status)
        )  # fmt: skip
        yield Plane(server, config, tap_address, root), nursery
        nursery.cancel_scope.cancel()


async def start_proxy(
    root: Pki, nursery: trio.Nursery, address: tuple[str, int], proxy_tap: ProxyTap | None
) -> ConfigClient:
    cert = root.issue(ZTUNNEL_ID)
    pool = await nursery.start(_pool, cert)
    client = ConfigClient(
        pool, source=ZTUNNEL_ID, address=address, expected=CP_ID, node="node-1",
        token="node-1-token", on_update=noop, backoff=FAST, tap=proxy_tap,
    )  # fmt: skip
    await nursery.start(client.run)
    return client


async def _pool(cert: Any, *, task_status: trio.TaskStatus[Any]) -> None:
    async with open_hbone_pool(lambda _s: cert) as pool:
        task_status.started(pool)
        await trio.sleep_forever()


def event(path: str, namespace: str = "demo") -> TapEvent:
    return TapEvent(
        "http", "waypoint", 0.0, 2.0, src_identity=f"spiffe://cluster.local/ns/{namespace}/sa/c",
        src_workload=f"{namespace}/client", src_namespace=namespace, method="GET", path=path,
        status=200,
    )  # fmt: skip


async def test_a_proxys_matching_events_reach_the_tap_client_and_untap_ends_them(
    root: Pki,
) -> None:
    proxy_tap = ProxyTap()
    with trio.fail_after(15):
        async with plane(root) as (cp, nursery):
            await start_proxy(root, nursery, cp.config_address, proxy_tap)
            got: list[dict[str, Any]] = []

            async def tapping() -> None:
                got.extend(await cp.tap({"target": "ns/demo", "path": "/hello"}, want=2))

            async with trio.open_nursery() as inner:
                inner.start_soon(tapping)
                await wait_until(lambda: proxy_tap.active)  # the tap reached the proxy
                proxy_tap.offer(event("/other"))  # filtered out in the proxy
                proxy_tap.offer(event("/hello/1", namespace="elsewhere"))  # and this
                proxy_tap.offer(event("/hello/2"))
                proxy_tap.offer(event("/hello/3"))
            assert [(e["type"], e["proxy"], e["path"]) for e in got] == [
                ("event", "ztunnel/node-1", "/hello/2"),
                ("event", "ztunnel/node-1", "/hello/3"),
            ]
            assert got[0]["src_identity"] == "spiffe://cluster.local/ns/demo/sa/c"
            await wait_until(lambda: not proxy_tap.active)  # the client left: untapped


async def test_a_proxys_drops_are_shown_to_the_client(root: Pki) -> None:
    proxy_tap = ProxyTap(limit=2)
    with trio.fail_after(15):
        async with plane(root) as (cp, nursery):
            await start_proxy(root, nursery, cp.config_address, proxy_tap)
            got: list[dict[str, Any]] = []

            async def tapping() -> None:
                got.extend(await cp.tap({"target": "ns/demo"}, want=3))

            async with trio.open_nursery() as inner:
                inner.start_soon(tapping)
                await wait_until(lambda: proxy_tap.active)
                for i in range(7):  # between two flushes: 2 kept, 5 dropped
                    proxy_tap.offer(event(f"/{i}"))
            assert [e["type"] for e in got] == ["event", "event", "dropped"]
            assert got[2]["count"] == 5


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_a_tap_without_the_token_is_refused_401(root: Pki, token: str | None) -> None:
    with trio.fail_after(15):
        async with plane(root) as (cp, _nursery):
            with pytest.raises(TapClientError) as refused:
                await cp.tap({"target": "ns/demo"}, want=1, token=token)
            assert refused.value.status == 401
            assert "token" in str(refused.value)
            assert cp.server.taps.proxies() == []  # and nothing was tapped


async def test_a_bad_filter_is_400_and_says_what_is_expected(root: Pki) -> None:
    with trio.fail_after(15):
        async with plane(root) as (cp, _nursery):
            with pytest.raises(TapClientError, match="pod/NAMESPACE/NAME") as refused:
                await cp.tap({"target": "deploy/demo/web"}, want=1)
            assert refused.value.status == 400


async def test_a_proxy_that_does_not_offer_tap_is_never_sent_one(root: Pki) -> None:
    with trio.fail_after(15):
        async with plane(root) as (cp, nursery):
            client = await start_proxy(root, nursery, cp.config_address, None)
            lines: list[dict[str, Any]] = []

            def on_line(line: dict[str, Any]) -> bool:
                lines.append(line)
                return False

            await tap(cp.tap_address, identity=CP_ID, bundle=root.bundle, token=TAP_TOKEN,
                      query={"target": "ns/demo"}, on_line=on_line)  # fmt: skip
            assert lines[0]["proxies"] == []
            await trio.sleep(0.3)
            assert client.connected
            assert client.reconnects == 0


async def test_a_proxy_that_reconnects_is_sent_the_open_taps_again(root: Pki) -> None:
    proxy_tap = ProxyTap()
    with trio.fail_after(15):
        async with plane(root) as (cp, nursery):
            relay = Relay(cp.config_address)
            address = await nursery.start(relay.serve)
            client = await start_proxy(root, nursery, address, proxy_tap)
            got: list[dict[str, Any]] = []

            async def tapping() -> None:
                got.extend(await cp.tap({"target": "ns/demo"}, want=1))

            async with trio.open_nursery() as inner:
                inner.start_soon(tapping)
                await wait_until(lambda: proxy_tap.active)
                relay.cut()
                await wait_until(lambda: client.reconnects == 1 and proxy_tap.active)
                proxy_tap.offer(event("/after"))
            assert got[0]["path"] == "/after"
