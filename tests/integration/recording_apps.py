"""Apps that record what reached them, for the hostile HTTP/2 tests: which requests began,
which arrived whole, and which the waypoint abandoned half-way (an HTTP/1.1 connection
closed in the middle of a body, an h2c stream reset). Either kind answers ``GET`` with
200 and echoes the healthy request's body (:func:`hostile_support.beside_healthy`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import trio

from mesh.hbone import H2Stream
from mesh.hbone.stream import StreamReset
from mesh.model import ServicePort
from tests.integration.h2_support import serve_h2c
from tests.integration.hostile_support import raw_app
from tests.integration.waypoint_support import Mesh, Pod, open_mesh
from tests.pki import Pki

AppKind = Literal["http1", "h2c"]
PORT_NAMES = {"http1": "http", "h2c": "http2"}


@dataclass
class Recording:
    begun: list[str] = field(default_factory=list)  # paths whose request head arrived
    whole: list[str] = field(default_factory=list)  # ... whose request arrived whole
    abandoned: list[str] = field(default_factory=list)  # ... cut by the waypoint half-way
    reset_codes: list[int] = field(default_factory=list)  # h2c: the codes of those resets

    async def h1(self, head: bytes, stream: trio.SocketStream) -> None:
        """An HTTP/1.1 request other than the healthy one: GET is answered; any other
        method waits for a body that, in these tests, never comes whole."""
        method, path = head.split(b" ")[:2]
        self.begun.append(path.decode())
        if method == b"GET":
            self.whole.append(path.decode())
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
            )
            return
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):
                pass
        self.abandoned.append(path.decode())  # closed before the body was whole

    async def h2(self, stream: H2Stream) -> None:
        headers = dict(stream.request_headers)
        path = headers.get(":path", "")
        self.begun.append(path)
        body = bytearray()
        whole = False
        try:
            while data := await stream.receive_some():
                body += data
            whole = True
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            self.reset_codes.append(cause.code if isinstance(cause, StreamReset) else -1)
            return
        finally:  # a reset may also cancel this handler (our engine's reset_by_peer)
            if not whole:
                self.abandoned.append(path)
        self.whole.append(path)
        payload = json.dumps({"body": body.decode(errors="replace")}).encode()
        stream.send_headers([(":status", "200"), ("content-length", str(len(payload)))])
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(payload)
            await stream.send_eof()


@contextlib.asynccontextmanager
async def recording_mesh(root: Pki, kind: AppKind) -> AsyncIterator[tuple[Mesh, Recording]]:
    """A waypoint in front of one recording app of ``kind``, its port declared so."""
    recording = Recording()
    pod = Pod("web-0", "10.0.0.11", app=False)
    async with trio.open_nursery() as nursery:
        if kind == "http1":
            pod.app_port = await nursery.start(raw_app, recording.h1)
        else:
            pod.app_port = await nursery.start(serve_h2c, recording.h2)
        ports = [ServicePort(80, 8080, name=PORT_NAMES[kind])]
        async with open_mesh(root, [pod], ports=ports) as mesh:
            yield mesh, recording
        nursery.cancel_scope.cancel()
