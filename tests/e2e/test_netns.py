"""``NetworkNamespace``: sockets made inline inside a namespace, slow work in a worker
thread; the calling thread always comes back to its own namespace."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from k8s.local.network import listening_tcp_ports
from mesh.netns import NamespaceKey, NetnsError, NetworkNamespace
from tests.e2e.conftest import free_octet

pytestmark = pytest.mark.root


def current_key() -> NamespaceKey:
    """(inode, device) of the calling thread's network namespace."""
    st = os.stat("/proc/thread-self/ns/net")
    return (st.st_ino, st.st_dev)


@dataclass(frozen=True)
class Namespace:
    name: str
    inside_ip: str
    host_ip: str


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A namespace joined to the host by a veth pair on a free /30; removed afterwards."""
    suffix = secrets.token_hex(3)
    octet = free_octet()
    ns = Namespace(f"ambtest-{suffix}", f"10.{octet}.0.2", f"10.{octet}.0.1")
    veth = f"vt{suffix}"
    commands = [
        ["ip", "netns", "add", ns.name],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns.name],
        ["ip", "addr", "add", f"{ns.host_ip}/30", "dev", veth],
        ["ip", "link", "set", veth, "up"],
        ["ip", "-n", ns.name, "addr", "add", f"{ns.inside_ip}/30", "dev", "eth0"],
        ["ip", "-n", ns.name, "link", "set", "eth0", "up"],
        ["ip", "-n", ns.name, "link", "set", "lo", "up"],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, timeout=10)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=10)
        assert (
            ns.name
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )


def _listener(ip: str) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((ip, 0))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


async def test_a_socket_made_inline_listens_on_the_namespace_address(namespace: Namespace) -> None:
    before = current_key()
    with NetworkNamespace.open(namespace.name) as netns:
        assert netns.key != before
        assert await netns.run(current_key) == netns.key  # compared by (inode, device)
        assert current_key() == before
        # Trio's worker threads come back too.
        assert await trio.to_thread.run_sync(current_key) == before

        with netns.raw_socket() as raw:
            assert current_key() == before
            raw.bind((namespace.inside_ip, 0))
            raw.listen()
            port = raw.getsockname()[1]
            assert port in await netns.run(listening_tcp_ports)
            assert port not in listening_tcp_ports()
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw.dup()))
            with trio.fail_after(5):
                client = await trio.open_tcp_stream(namespace.inside_ip, port)
                server = await listener.accept()
                await client.send_all(b"ping")
                assert await server.receive_some(4) == b"ping"
                await client.aclose()
                await server.aclose()
            await listener.aclose()
    assert current_key() == before


async def test_listen_and_dial_inside(namespace: Namespace) -> None:
    with NetworkNamespace.open(namespace.name) as netns:
        listener = await netns.listen(0, host=namespace.inside_ip)
        with listener:
            port = listener.getsockname()[1]
            with trio.fail_after(5):
                dialled = await netns.dial((namespace.inside_ip, port))
                accepted, peer = await listener.accept()
                with dialled, accepted:
                    assert peer[0] == namespace.inside_ip  # the dial came from inside
                    assert dialled.getsockopt(socket.SOL_SOCKET, 36) == 0x539  # SO_MARK


async def test_the_namespace_address_does_not_exist_outside(namespace: Namespace) -> None:
    with pytest.raises(OSError, match="Cannot assign requested address"):
        _listener(namespace.inside_ip)


async def test_errors_of_fn_come_back_and_the_caller_stays(namespace: Namespace) -> None:
    before = current_key()

    def boom() -> None:
        raise ValueError("inside")

    with NetworkNamespace.open(namespace.name) as netns:
        with pytest.raises(ValueError, match="inside"):
            await netns.run(boom)
        assert current_key() == before


async def test_a_missing_or_closed_namespace_is_a_clear_error(namespace: Namespace) -> None:
    with pytest.raises(NetnsError, match=r"does not exist.*is the pod running"):
        NetworkNamespace.open("ambtest-no-such-namespace")
    netns = NetworkNamespace.open(namespace.name)
    netns.close()
    with pytest.raises(NetnsError, match="was closed"):
        netns.socket()


async def test_calls_run_concurrently_and_survive_cancellation(namespace: Namespace) -> None:
    before = current_key()
    results: list[tuple[int, int]] = []
    with NetworkNamespace.open(namespace.name) as netns:
        with trio.move_on_after(0.01):  # the calls finish even though their caller is cancelled
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(_collect, netns, results)
        assert results == [netns.key] * 20
    assert current_key() == before


async def _collect(netns: NetworkNamespace, results: list[tuple[int, int]]) -> None:
    def slow() -> tuple[int, int]:
        import time

        time.sleep(0.05)
        return current_key()

    results.append(await netns.run(slow))
