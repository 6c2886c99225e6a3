"""A TCP relay on loopback that a test can cut (peer vanishes) or freeze
(peer stalls: sockets stay open, nothing moves)."""

from __future__ import annotations

import socket

import trio


class Relay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._freezes: list[trio.Event] = []
        self._scopes: list[trio.CancelScope] = []

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            self.address = listener.getsockname()
            async with trio.open_nursery() as nursery:
                task_status.started(self.address)
                while True:
                    downstream, _ = await listener.accept()
                    nursery.start_soon(self._pipe_pair, downstream)

    async def _pipe_pair(self, downstream: trio.socket.SocketType) -> None:
        upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with downstream, upstream:
            await upstream.connect(self.target)
            scope = trio.CancelScope()
            self._scopes.append(scope)
            frozen = trio.Event()
            self._freezes.append(frozen)
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, downstream, upstream, frozen)
                    nursery.start_soon(self._pipe, upstream, downstream, frozen)

    async def _pipe(
        self, src: trio.socket.SocketType, dst: trio.socket.SocketType, frozen: trio.Event
    ) -> None:
        while True:
            data = await src.recv(65536)
            if frozen.is_set():
                await trio.sleep_forever()
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            await _send_all(dst, data)

    def freeze(self) -> None:
        """Stop moving bytes on every connection relayed so far; they stay open (a
        stalled or partitioned peer). Connections made later are relayed normally."""
        for frozen in self._freezes:
            frozen.set()

    def cut(self) -> None:
        """Close every relayed connection at once (a peer that vanishes)."""
        for scope in self._scopes:
            scope.cancel()  # each pair's sockets close as its tasks leave their `with`


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]
