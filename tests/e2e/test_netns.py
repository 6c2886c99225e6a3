"""``in_netns``: code runs inside a named network namespace; callers never move."""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from k8s.local.errors import NetnsError
from k8s.local.netns import current_netns_inode, in_netns, run_in_netns
from k8s.local.network import listening_tcp_ports
from tests.e2e.conftest import free_octet

pytestmark = pytest.mark.root


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


async def test_a_socket_made_inside_listens_on_the_namespace_address(namespace: Namespace) -> None:
    before = current_netns_inode()
    inside = await in_netns(namespace.name, current_netns_inode)
    assert inside != before
    assert current_netns_inode() == before
    # Trio's worker threads are not touched either.
    assert await trio.to_thread.run_sync(current_netns_inode) == before

    with await in_netns(namespace.name, lambda: _listener(namespace.inside_ip)) as raw:
        port = raw.getsockname()[1]
        assert port in await in_netns(namespace.name, listening_tcp_ports)
        assert port not in listening_tcp_ports()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        with trio.fail_after(5):
            client = await trio.open_tcp_stream(namespace.inside_ip, port)
            server = await listener.accept()
            await client.send_all(b"ping")
            assert await server.receive_some(4) == b"ping"
            await client.aclose()
            await server.aclose()
    assert current_netns_inode() == before


async def test_the_namespace_address_does_not_exist_outside(namespace: Namespace) -> None:
    with pytest.raises(OSError, match="Cannot assign requested address"):
        _listener(namespace.inside_ip)


async def test_errors_of_fn_come_back_and_the_caller_stays(namespace: Namespace) -> None:
    before = current_netns_inode()

    def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        await in_netns(namespace.name, boom)
    assert current_netns_inode() == before
    assert run_in_netns(namespace.name, current_netns_inode) != before
    assert current_netns_inode() == before


async def test_a_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(NetnsError, match=r"does not exist.*ambit get pods"):
        await in_netns("ambtest-no-such-namespace", current_netns_inode)


async def test_calls_run_concurrently_and_survive_cancellation(namespace: Namespace) -> None:
    before = current_netns_inode()
    results: list[int] = []
    with trio.move_on_after(0.01):  # the calls finish even though their caller is cancelled
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(_collect, namespace.name, results)
    inside = await in_netns(namespace.name, current_netns_inode)
    assert results == [inside] * 20
    assert current_netns_inode() == before


async def _collect(name: str, results: list[int]) -> None:
    def slow() -> int:
        import time

        time.sleep(0.05)
        return current_netns_inode()

    results.append(await in_netns(name, slow))
