"""An h2c client that writes its frames byte by byte, for attacks our engine's client side
would never send: over one CONNECT to the waypoint it sends what the test says
(:mod:`mesh.hbone.frames` helpers, ``hpack.Encoder``), and it reads, parses (hyperframe)
and records every frame the waypoint answers with, stream by stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import hpack
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from mesh.hbone import frames
from tests.integration.waypoint_support import Mesh

Headers = list[tuple[str, str]]
BIG_WINDOW = 2**30  # the client never makes the waypoint wait for credit
PRIORITY = 0x2
RST_STREAM = 0x3


def get(path: str, *, authority: str = "web") -> Headers:
    return [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", authority)]


def post(path: str, *extra: tuple[str, str]) -> Headers:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "web"),
            *extra]  # fmt: skip


@dataclass
class Answer:
    """What the waypoint sent on one stream."""

    headers: Headers = field(default_factory=list)  # the response head (1xx skipped)
    trailers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM
    reset: int | None = None  # the code of its RST_STREAM

    @property
    def status(self) -> int:
        return int(dict(self.headers).get(":status", "0"))


class RawH2:
    """One h2c connection whose frames the test writes itself."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.answers: dict[int, Answer] = {}
        self.goaway: int | None = None  # the code of the waypoint's GOAWAY
        self.closed = False  # the waypoint closed the connection
        self._changed = trio.Event()
        self._sending = trio.Lock()  # the test's task and the reader's acks
        self.settings_acked = trio.Event()  # we acknowledged the waypoint's SETTINGS
        self.peer_settings: dict[int, int] = {}  # what the waypoint's SETTINGS said
        self._block: tuple[int, bool, bytearray] | None = None

    # ---- what the test sends ----------------------------------------------------

    def headers(self, sid: int, headers: Headers, *, end_stream: bool = False,
                end_headers: bool = True) -> bytes:  # fmt: skip
        """A HEADERS frame (END_HEADERS unless told) carrying ``headers``, encoded as is."""
        block = self.encoder.encode(headers)
        flags = (frames.FLAG_END_STREAM if end_stream else 0) | (
            frames.FLAG_END_HEADERS if end_headers else 0
        )
        return frames.frame_header(len(block), frames.HEADERS, flags, sid) + block

    @staticmethod
    def data(sid: int, data: bytes, *, end_stream: bool = False) -> bytes:
        return frames.data_header(len(data), sid, end_stream=end_stream) + data

    @staticmethod
    def rst(sid: int, code: int) -> bytes:
        return frames.frame_header(4, RST_STREAM, 0, sid) + code.to_bytes(4, "big")

    @staticmethod
    def priority(sid: int, depends_on: int) -> bytes:
        return frames.frame_header(5, PRIORITY, 0, sid) + depends_on.to_bytes(4, "big") + b"\x10"

    @staticmethod
    def window_update(sid: int, increment: int) -> bytes:
        return frames.frame_header(4, frames.WINDOW_UPDATE, 0, sid) + increment.to_bytes(4, "big")

    async def send(self, *data: bytes) -> None:
        async with self._sending:
            await self.stream.send_all(b"".join(data))

    async def request(self, sid: int, headers: Headers, body: bytes | None = None) -> Answer:
        """Send a whole request on ``sid`` and wait for its whole answer (or reset)."""
        if body is None:
            await self.send(self.headers(sid, headers, end_stream=True))
        else:
            await self.send(self.headers(sid, headers), self.data(sid, body, end_stream=True))
        return await self.finished(sid)

    # ---- what the test waits for ------------------------------------------------

    def answer(self, sid: int) -> Answer:
        return self.answers.setdefault(sid, Answer())

    async def wait_for(self, check: Callable[[], bool]) -> None:
        """Until ``check()`` holds (an AssertionError if the connection ends first)."""
        while not check():
            if self.closed:
                raise AssertionError("the waypoint closed the connection")
            await self._changed.wait()

    async def finished(self, sid: int) -> Answer:
        """The answer on ``sid`` once it ended or was reset."""
        answer = self.answer(sid)
        await self.wait_for(lambda: answer.ended or answer.reset is not None)
        return answer

    async def wait_closed(self) -> None:
        while not self.closed:
            await self._changed.wait()

    # ---- reading ----------------------------------------------------------------

    async def read(self) -> None:
        buf = bytearray()
        try:
            while data := await self.stream.receive_some(65536):
                buf += data
                pos = 0
                while len(buf) - pos >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(buf[pos : pos + 9]))
                    if len(buf) - pos - 9 < length:
                        break
                    frame.parse_body(memoryview(buf[pos + 9 : pos + 9 + length]))
                    pos += 9 + length
                    await self._on_frame(frame)
                del buf[:pos]
                self._wake()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed = True
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _on_frame(self, frame: Frame) -> None:
        sid = frame.stream_id
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.peer_settings.update(frame.settings)
            await self.send(frames.frame_header(0, frames.SETTINGS, frames.FLAG_ACK, 0))
            self.settings_acked.set()
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            ack = frames.frame_header(8, frames.PING, frames.FLAG_ACK, 0) + frame.opaque_data
            await self.send(ack)
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame.error_code
        elif isinstance(frame, RstStreamFrame):
            self.answer(sid).reset = frame.error_code
        elif isinstance(frame, DataFrame):
            self.answer(sid).body += frame.data
            self.answer(sid).ended = "END_STREAM" in frame.flags
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            if isinstance(frame, HeadersFrame):
                self._block = (sid, "END_STREAM" in frame.flags, bytearray())
            assert self._block is not None
            self._block[2].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                _sid, end, block = self._block
                self._on_headers(sid, self.decoder.decode(bytes(block)), end)  # type: ignore[arg-type]

    def _on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        answer = self.answer(sid)
        status = dict(headers).get(":status", "")
        if status.startswith("1"):
            return
        if answer.headers:
            answer.trailers = headers
        else:
            answer.headers = headers
        answer.ended = answer.ended or end_stream


@contextlib.asynccontextmanager
async def raw_h2(mesh: Mesh) -> AsyncIterator[RawH2]:
    """A :class:`RawH2` inside a new CONNECT to the waypoint, its preface sent (SETTINGS
    with a large stream window, and as much again for the connection) and the waypoint's
    SETTINGS acknowledged."""
    tunnel = await mesh.connect()
    client = RawH2(tunnel)
    settings = (0x4).to_bytes(2, "big") + BIG_WINDOW.to_bytes(4, "big")
    await client.send(
        frames.CONNECTION_PREFACE,
        frames.frame_header(len(settings), frames.SETTINGS, 0, 0) + settings,
        frames.window_update(0, BIG_WINDOW),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.read)
        await client.settings_acked.wait()  # no ACK of ours lands inside a test's header block
        yield client
        nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await tunnel.aclose()
