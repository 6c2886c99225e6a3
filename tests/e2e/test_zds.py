"""Pods handed to ztunnel over its unix socket, with real parts: the pods' network
namespaces (tests/e2e/test_ztunnel.py's bridge and pods a, b, c), capture rules in a
and b (the node agent's job, done here by the test), ztunnels in this process with a
real CA and snapshots fed directly, and the agent's real end, ``node.zds_client``.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
import trio

from ca import CertificateAuthority, LocalSigner
from ca.auth import StaticAuthorizer
from mesh.capture import install_capture
from mesh.certs import open_certificate_manager
from mesh.identity import SpiffeId
from mesh.zds import Ack, PodInfo, Remove, encode, parse_ack
from node.zds_client import ZdsClient, ZdsError, socket_key
from tests.e2e.test_ztunnel import (
    APP_PORT,
    Net,
    app_stream,
    echo_app,
    exchange,
    listening_ports,
    mesh,
    pod_network,
    refused,
)
from tests.recording import Recorder
from tests.waiting import wait_until
from ztunnel.zds import ZdsServer
from ztunnel.ztunnel import Ztunnel

pytestmark = pytest.mark.root
PORTS = {15001, 15006, 15008}
ALLOWED = ("client", "server", "legacy")  # the CA refuses any other service account


@dataclass
class World:
    net: Net
    path: Path
    authority: CertificateAuthority
    uids: dict[str, str]

    def pod(self, name: str, sa: str | None = None) -> PodInfo:
        sa = sa or {"a": "client", "b": "server", "c": "legacy"}[name]
        return PodInfo(self.uids[name], "default", name, sa, (self.net.ip(name),))

    def netns(self, name: str) -> str:
        return f"/run/netns/{self.net.netns[name]}"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with pod_network() as net:
        uids = {name: f"uid-{name}-{secrets.token_hex(4)}" for name in "abc"}
        yield World(net, tmp_path / "run" / "ztunnel.sock", CertificateAuthority.create(), uids)


@dataclass
class Running:
    ztunnel: Ztunnel
    recorder: Recorder


@contextlib.asynccontextmanager
async def ztunnel(world: World, *, ack_seconds: float = 5.0) -> AsyncIterator[Running]:
    """A ztunnel whose pods come from the socket at ``world.path``."""
    grants = StaticAuthorizer(
        {"node-1": [SpiffeId("cluster.local", "default", sa) for sa in ALLOWED]}
    )
    signer = LocalSigner(world.authority, caller="node-1", authorizer=grants)
    async with open_certificate_manager(signer) as certs:
        recorder = Recorder()
        zt = Ztunnel(
            node="node-1", certificates=certs, netns_for=None, telemetry=recorder.telemetry
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(zt.run)
            await zt.on_update(mesh(world.net))
            server = ZdsServer(
                zt, world.path, trust_domain="cluster.local", ack_seconds=ack_seconds
            )
            await nursery.start(server.serve)
            yield Running(zt, recorder)
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def agent(world: World, *pods: str) -> AsyncIterator[ZdsClient]:
    """The agent's end, handed ``pods``, its set complete."""
    client = ZdsClient(world.path, poll_seconds=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        for name in pods:
            await client.add(world.pod(name), world.netns(name), seconds=10)
        client.synced()
        yield client
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def apps(net: Net) -> AsyncIterator[None]:
    """Capture rules in a and b, echo apps in b and c."""
    for name in "ab":
        await install_capture(net.netns[name])
    async with trio.open_nursery() as nursery:
        for name in "bc":
            await nursery.start(echo_app, net.netns[name], [])
        yield
        nursery.cancel_scope.cancel()


async def echoes(stream: trio.SocketStream, payload: bytes) -> bool:
    await stream.send_all(payload)
    got = b""
    while len(got) < len(payload):
        chunk = await stream.receive_some()
        if not chunk:
            break
        got += chunk
    return got == payload


async def test_a_pod_handed_over_is_captured_until_removed(world: World) -> None:
    net = world.net
    with trio.fail_after(40):
        async with apps(world.net), ztunnel(world) as run, agent(world, "a", "b") as client:
            assert listening_ports(net.netns["a"]) >= PORTS
            assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"over mTLS") == b"over mTLS"
            await wait_until(lambda: any(r.mtls for r, _ in run.recorder.closed))
            inbound = [r for r, _ in run.recorder.closed if r.direction == "inbound"]
            assert inbound[0].src_identity == SpiffeId("cluster.local", "default", "client")
            pods = {p["uid"]: p for p in run.ztunnel.status()["pods"]}
            assert pods["default/a"]["pod_uid"] == world.uids["a"]
            assert pods["default/a"]["identity"] == "spiffe://cluster.local/ns/default/sa/client"

            await client.remove(world.uids["a"])
            assert not PORTS & listening_ports(net.netns["a"])  # released when acked
            assert set(run.ztunnel.pods()) == {"default/b"}
            assert await refused(net, "a", (net.ip("b"), APP_PORT))  # fails closed


async def test_a_pod_the_ca_refuses_is_answered_with_the_refusal(world: World) -> None:
    with trio.fail_after(30):
        async with ztunnel(world, ack_seconds=20) as run, agent(world) as client:
            with trio.fail_after(5):  # the refusal is answered at once, not after the bound
                with pytest.raises(ZdsError, match="may not have certificates for spiffe"):
                    await client.add(world.pod("a", sa="intruder"), world.netns("a"))
            assert "default/a" in run.ztunnel.pods()  # still wanted: setup goes on
            await client.remove(world.uids["a"])
            assert run.ztunnel.pods() == {}


async def test_an_add_before_any_ztunnel_waits_and_is_sent_on_connect(world: World) -> None:
    with trio.fail_after(30):
        async with agent(world) as client, trio.open_nursery() as nursery:
            added = trio.Event()

            async def add_a() -> None:
                await client.add(world.pod("a"), world.netns("a"), seconds=20)
                added.set()

            nursery.start_soon(add_a)
            await trio.sleep(0.3)
            assert not added.is_set()
            assert not client.connected
            async with ztunnel(world) as run:
                await added.wait()
                assert listening_ports(world.net.netns["a"]) >= PORTS
                assert set(run.ztunnel.pods()) == {"default/a"}


async def test_a_restarted_agent_with_a_smaller_set_releases_only_the_missing_pod(
    world: World,
) -> None:
    net = world.net
    with trio.fail_after(40):
        async with apps(world.net), ztunnel(world) as run:
            async with agent(world, "a", "b"):
                pass  # the agent exits: its connection closes, the pods stay
            assert set(run.ztunnel.pods()) == {"default/a", "default/b"}
            # c (not meshed) holds a connection into b through b's 15006 capture.
            async with await app_stream(net, "c", (net.ip("b"), APP_PORT)) as held:
                assert await echoes(held, b"before")
                client = ZdsClient(world.path, poll_seconds=0.05)
                async with trio.open_nursery() as nursery:
                    await nursery.start(client.run)
                    await client.add(world.pod("b"), world.netns("b"))
                    # Its set is not complete yet: nothing is released.
                    assert set(run.ztunnel.pods()) == {"default/a", "default/b"}
                    client.synced()
                    await wait_until(lambda: set(run.ztunnel.pods()) == {"default/b"})
                    await wait_until(lambda: not PORTS & listening_ports(net.netns["a"]))
                    assert await echoes(held, b"after")  # b was never touched
                    assert listening_ports(net.netns["b"]) >= PORTS
                    nursery.cancel_scope.cancel()


async def test_the_agent_going_away_leaves_traffic_untouched(world: World) -> None:
    net = world.net
    with trio.fail_after(40):
        async with apps(world.net), ztunnel(world) as run:
            async with agent(world, "a", "b"):
                held = await app_stream(net, "a", (net.ip("b"), APP_PORT))
                assert await echoes(held, b"while the agent runs")
            async with held:  # the agent's connection is closed now
                assert await echoes(held, b"after it left")
                assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"new") == b"new"
            assert set(run.ztunnel.pods()) == {"default/a", "default/b"}


async def raw_request(sock: trio.socket.SocketType, data: bytes, fds: tuple[int, ...] = ()) -> Ack:
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    await sock.sendmsg([data], rights if fds else [])
    return parse_ack(await sock.recv(65536))


async def test_malformed_messages_get_an_error_ack_and_one_log_line_each(world: World) -> None:
    net = world.net
    pod_a = {"type": "add", "pod": world.pod("a").to_json()}
    with trio.fail_after(40):
        async with apps(world.net), ztunnel(world) as run, agent(world, "a", "b"):
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with sock, structlog.testing.capture_logs() as logs:
                await sock.connect(str(world.path))
                before_hello = await raw_request(sock, encode(Remove(world.uids["a"])))
                assert before_hello.error == "expected hello first"
                assert (await raw_request(sock, b'{"type": "hello", "version": 1}')).error is None
                assert "not JSON" in ((await raw_request(sock, b"{nope")).error or "")
                no_fd = await raw_request(sock, json.dumps(pod_a).encode())
                assert no_fd.uid == world.uids["a"]
                assert "carries 1 file descriptor, not 0" in (no_fd.error or "")
                not_netns = os.open("/dev/null", os.O_RDONLY)
                bad_fd = await raw_request(sock, json.dumps(pod_a).encode(), (not_netns,))
                os.close(not_netns)
                assert "not a namespace's fd" in (bad_fd.error or "")
                too_long = await raw_request(sock, b" " * 70000)
                assert "at most 64 KiB" in (too_long.error or "")
            refusals = [e for e in logs if e["event"] == "zds_message_refused"]
            assert len(refusals) == 5
            # Every pod kept serving, a's capture untouched by the broken add.
            assert set(run.ztunnel.pods()) == {"default/a", "default/b"}
            assert run.ztunnel.pods()["default/a"].pod_uid == world.uids["a"]
            assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"fine") == b"fine"


async def test_a_new_ztunnel_on_the_same_path_takes_over_while_the_first_drains(
    world: World,
) -> None:
    """A hitless restart: the second ztunnel binds a fresh socket at the path, the agent
    hands it the full set, both serve (SO_REUSEPORT) until the first has drained; a
    connection through the first lives on, new ones go through the second."""
    net = world.net
    with trio.fail_after(60):
        async with apps(world.net), ztunnel(world) as first, agent(world, "a", "b") as client:
            old_socket = socket_key(world.path)
            async with await app_stream(net, "a", (net.ip("b"), APP_PORT)) as held:
                assert await echoes(held, b"through the first")
                async with ztunnel(world) as second:
                    assert socket_key(world.path) != old_socket
                    assert not second.ztunnel.ready()[0]  # until the agent's set is in
                    await wait_until(lambda: second.ztunnel.ready()[0], seconds=15)
                    assert set(second.ztunnel.pods()) == {"default/a", "default/b"}
                    assert client.connected
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(first.ztunnel.drain, 30.0)
                        await wait_until(lambda: first.ztunnel.draining)
                        for n in range(3):
                            assert await echoes(held, b"still there %d" % n)
                            payload = b"new %d" % n
                            assert await exchange(net, "a", (net.ip("b"), APP_PORT), payload)
                            await trio.sleep(0.1)
                        assert await echoes(held, b"last words")
                        await held.send_eof()
                        assert await held.receive_some() == b""
                        # The first ztunnel's drain ends with its last connection.
                    assert len(second.recorder.closed) >= 6  # the new ones, both ways
                    assert any(r.direction == "outbound" for r, _ in first.recorder.closed)


async def test_another_pod_under_the_same_name_is_captured_anew(world: World) -> None:
    """A pod deleted and created again keeps its namespace/name, not its uid: ztunnel
    captures the new one, and a late remove of the old uid leaves the new one alone."""
    net = world.net
    with trio.fail_after(40):
        async with apps(world.net), ztunnel(world) as run, agent(world, "a", "b") as client:
            held = await app_stream(net, "a", (net.ip("b"), APP_PORT))
            async with held:
                assert await echoes(held, b"old pod")
                old = world.pod("a")
                world.uids["a"] = "uid-a-again"
                await client.add(world.pod("a"), world.netns("a"))
                assert run.ztunnel.pods()["default/a"].pod_uid == "uid-a-again"
                with trio.fail_after(5):  # the old pod's connections went with it
                    with contextlib.suppress(trio.BrokenResourceError):
                        while await held.receive_some():
                            pass
            await client.remove(old.uid)
            assert run.ztunnel.pods()["default/a"].pod_uid == "uid-a-again"
            assert listening_ports(net.netns["a"]) >= PORTS
            assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"new pod") == b"new pod"
