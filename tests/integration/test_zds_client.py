"""The agent's end of ztunnel's pod socket (``node.zds_client``) against a scripted
ztunnel on a real unix socket: what it sends on each connection and when, a new
ztunnel found by the path's inode, and a draining one left for the new. No root: the
"namespace" it opens and passes is any file (tests/e2e/test_zds.py has real ones)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from mesh.zds import DRAINING, Ack, Add, PodInfo, Request, encode, parse_request
from mesh.zds import receive_datagram as receive
from node.zds_client import ZdsClient, ZdsError
from tests.waiting import wait_until

Answer = Callable[[Request], Ack]


def pod(name: str) -> PodInfo:
    return PodInfo(f"uid-{name}", "default", name, name, ("10.1.0.1",))


def ok(request: Request) -> Ack:
    return Ack(request.pod.uid if isinstance(request, Add) else None)


class FakeZtunnel:
    """Binds a fresh socket at ``path`` (renamed over it, as ztunnel does) and answers
    with ``answer``; every request it got, by connection."""

    def __init__(self, path: Path, answer: Answer = ok) -> None:
        self.path = path
        self.answer = answer
        self.connections: list[list[str]] = []
        self.open = 0

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        temporary = self.path.with_name(f".{secrets.token_hex(4)}")
        with listener:
            await listener.bind(str(temporary))
            listener.listen(4)
            os.rename(temporary, self.path)
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._serve, sock)

    async def _serve(self, sock: trio.socket.SocketType) -> None:
        got: list[str] = []
        self.connections.append(got)
        self.open += 1
        with sock:
            while (datagram := await receive(sock)) is not None:
                for fd in datagram.fds:
                    os.close(fd)
                request = parse_request(datagram.data, len(datagram.fds))
                got.append(type(request).__name__ + (f":{request.pod.name}"
                           if isinstance(request, Add) else ""))  # fmt: skip
                await sock.send(encode(self.answer(request)))
        self.open -= 1


@contextlib.asynccontextmanager
async def fake(path: Path, answer: Answer = ok) -> AsyncIterator[FakeZtunnel]:
    zt = FakeZtunnel(path, answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(zt.serve)
        yield zt
        nursery.cancel_scope.cancel()


@pytest.fixture
def netns(tmp_path: Path) -> str:
    path = tmp_path / "netns"
    path.write_text("")
    return str(path)


async def test_each_connection_gets_hello_every_pod_and_snapshot_sent_once_complete(
    tmp_path: Path, netns: str
) -> None:
    path = tmp_path / "ztunnel.sock"
    client = ZdsClient(path, poll_seconds=0.02)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            async with trio.open_nursery() as adding:  # no ztunnel yet: add waits
                adding.start_soon(lambda: client.add(pod("a"), netns, seconds=5))
                await trio.sleep(0.1)
                async with fake(path) as first:
                    await wait_until(lambda: client.connected)
            # A restarted agent's set is not complete: no snapshot_sent yet.
            # The waiting add and the connection's first exchange may both hand the pod:
            # the same pod again is answered at once by ztunnel, nothing changes.
            assert first.connections[0][:2] == ["Hello", "Add:a"]
            assert set(first.connections[0]) == {"Hello", "Add:a"}
            assert "SnapshotSent" not in first.connections[0]
            async with fake(path) as second:
                await client.add(pod("b"), netns)
                client.synced()
                await wait_until(lambda: "SnapshotSent" in second.connections[-1])
                assert second.connections[-1][0] == "Hello"
                assert {"Add:a", "Add:b"} <= set(second.connections[-1])
                await client.remove("uid-a")
                assert second.connections[-1][-1] == "Remove"
                assert set(client.pods()) == {"uid-b"}
            nursery.cancel_scope.cancel()


async def test_a_new_ztunnel_at_the_path_gets_the_full_set_and_the_old_keeps_its_link(
    tmp_path: Path, netns: str
) -> None:
    path = tmp_path / "ztunnel.sock"
    client = ZdsClient(path, poll_seconds=0.02)
    with trio.fail_after(10):
        async with fake(path) as old, trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.add(pod("a"), netns)
            client.synced()
            async with fake(path) as new:
                await wait_until(lambda: new.connections and "SnapshotSent" in new.connections[0])
                assert new.connections[0] == ["Hello", "Add:a", "SnapshotSent"]
                assert old.open == 1  # left for the old ztunnel to close as it exits
                await client.add(pod("b"), netns)
                assert new.connections[0][-1] == "Add:b"
                assert "Add:b" not in old.connections[0]
            nursery.cancel_scope.cancel()


async def test_a_draining_ztunnel_leaves_the_pod_for_the_next_and_refusals_raise(
    tmp_path: Path, netns: str
) -> None:
    path = tmp_path / "ztunnel.sock"

    def draining(request: Request) -> Ack:
        return Ack(error=f"{DRAINING}: go away") if isinstance(request, Add) else Ack()

    def refusing(request: Request) -> Ack:
        return Ack(error="CA refused") if isinstance(request, Add) else Ack()

    client = ZdsClient(path, poll_seconds=0.02)
    with trio.fail_after(10):
        async with fake(path, draining), trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await wait_until(lambda: client.connected)
            added = trio.Event()

            async def add() -> None:
                await client.add(pod("a"), netns)
                added.set()

            nursery.start_soon(add)
            await trio.sleep(0.2)
            assert not added.is_set()  # waits for a ztunnel that is not draining
            async with fake(path):
                await added.wait()
            async with fake(path, refusing):
                await wait_until(lambda: client.connected)
                await trio.sleep(0.1)
                with pytest.raises(ZdsError, match="ztunnel refused pod default/c: CA refused"):
                    await client.add(pod("c"), netns)
                with pytest.raises(ZdsError, match="network namespace"):
                    await client.add(pod("d"), str(path.with_name("gone")))
            nursery.cancel_scope.cancel()
