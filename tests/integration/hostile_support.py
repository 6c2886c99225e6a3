"""What the hostile-client tests share: a healthy request kept in flight beside each
attack (it must lose no byte), raw HTTP/1.x exchanges, apps that misbehave on purpose,
and a count of what the waypoint logged."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import h11
import trio

from tests.integration.waypoint_support import Client, Mesh

Logs = list[MutableMapping[str, Any]]
HEALTHY_BODY = b"0123456789abcdef" * 16_384  # 256 KiB, echoed back by the app as JSON


class Healthy:
    """A POST whose head and first half of body leave before the attack and the rest
    after it: the app must echo every byte, in order."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.client: Client | None = None

    async def start(self) -> None:
        self.client = client = Client(await self.mesh.connect())
        head = h11.Request(
            method="POST", target="/healthy",
            headers=[("host", "web"), ("content-length", str(len(HEALTHY_BODY)))],
        )  # fmt: skip
        half = len(HEALTHY_BODY) // 2
        out = (client.conn.send(head) or b"") + (
            client.conn.send(h11.Data(data=HEALTHY_BODY[:half])) or b""
        )
        await client.stream.send_all(out)

    async def finish(self) -> None:
        client = self.client
        assert client is not None
        half = len(HEALTHY_BODY) // 2
        out = client.conn.send(h11.Data(data=HEALTHY_BODY[half:])) or b""
        out += client.conn.send(h11.EndOfMessage()) or b""
        await client.stream.send_all(out)
        status, _headers, body = await client.response()
        assert status == 200
        assert json.loads(body)["body"].encode() == HEALTHY_BODY
        await client.stream.aclose()


@contextlib.asynccontextmanager
async def beside_healthy(mesh: Mesh) -> AsyncIterator[None]:
    """Run the block while a healthy request is half sent; check it whole afterwards."""
    healthy = Healthy(mesh)
    await healthy.start()
    yield
    await healthy.finish()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the peer closes (a reset counts as the end)."""
    out = b""
    with contextlib.suppress(trio.BrokenResourceError):
        while data := await stream.receive_some():
            out += data
    return out


async def exchange(mesh: Mesh, data: bytes, *, send_eof: bool = False) -> bytes:
    """Send ``data`` on a new CONNECT stream; all the waypoint answers until it closes."""
    stream = await mesh.connect()
    async with stream:
        await stream.send_all(data)
        if send_eof:
            await stream.send_eof()
        return await read_all(stream)


def status_of(answer: bytes) -> int:
    """The status of the first response in ``answer``, 0 for none."""
    if not answer.startswith(b"HTTP/1."):
        return 0
    return int(answer.split(b" ", 2)[1])


def count_responses(answer: bytes) -> int:
    """How many status lines ``answer`` holds (at its start or after a CRLF)."""
    return len(re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", answer))


def not_access_log(logs: Logs) -> list[str]:
    """The events logged above debug, other than the per-request access-log lines."""
    return [str(e["event"]) for e in logs
            if e["event"] != "request" and e.get("log_level") != "debug"]  # fmt: skip


async def raw_app(
    answer: Callable[[bytes, trio.SocketStream], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    """An app that reads one request head per connection and lets ``answer(head,
    stream)`` write whatever it likes; the healthy request (``/healthy``) gets a correct
    echo of its body."""

    async def serve(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    more = await stream.receive_some(65536)
                    if not more:
                        return
                    data += more
                head, _, rest = data.partition(b"\r\n\r\n")
                if b" /healthy " not in head.split(b"\r\n")[0]:
                    await answer(head, stream)
                    return
                await _echo(head, rest, stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def _echo(head: bytes, rest: bytes, stream: trio.SocketStream) -> None:
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = rest
    while len(body) < length:
        body += await stream.receive_some(65536)
    payload = json.dumps({"body": body.decode()}).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload)
    await stream.send_all(head + payload)
