"""One HTTP/2 connection over a byte stream, with its Trio tasks.

:class:`Http2Connection` runs the :class:`~mesh.hbone.engine.Http2Engine`
(frames, flow control, streams) over any :class:`~mesh.hbone.transport.Transport`
with one reader task, one writer task
(:class:`~mesh.hbone.writer.FrameWriter`), a keepalive and an idle timer, and
a task per incoming stream. HBONE is mutual TLS + this connection + CONNECT
(:meth:`Http2Connection.open_stream` on the client side,
:func:`mesh.hbone.request.connect_handler` on the server side).

Invariants:
- Bytes leave through one writer task, in the order they were queued; the
  read path never awaits a send.
- Flow-control credit is returned as the consumer reads, never when data is
  merely buffered.
- A connection error is remembered and fails every stream on it, never
  another connection.
- :meth:`serve` returns only when every handler task it started has finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
import trio
from h2.errors import ErrorCodes

from mesh.hbone import frames
from mesh.hbone.engine import Http2Engine
from mesh.hbone.goaway import GoawayStatistics
from mesh.hbone.settings import (
    HboneConnectionError,
    HboneRetryableError,
    HboneSettings,
    HboneStreamTimeout,
)
from mesh.hbone.stream import H2Stream
from mesh.hbone.transport import TRANSPORT_ERRORS, Transport
from mesh.hbone.window import WindowStatistics
from mesh.identity import SpiffeId
from mesh.reason import Reason
from mesh.tls import TlsStream

log = structlog.get_logger("mesh.hbone")

StreamHandler = Callable[[H2Stream], Awaitable[None]]


@dataclass(frozen=True)
class ConnectionStatistics:
    streams: int
    reserved: int
    send_window: int
    receive_window: WindowStatistics
    bytes_received: int
    available: bool
    closed: bool
    goaway: GoawayStatistics
    pings_sent: int
    pings_answered: int


class Http2Connection(Http2Engine):
    """An HTTP/2 connection over an established byte stream.

    Run :meth:`serve` in a nursery; it returns when the connection has ended
    and every handler it started has finished. Client side: :meth:`open_stream`
    (CONNECT) and :meth:`start_request` (any request). Server side: each
    incoming stream is handed to ``handler`` in its own task.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        peer: SpiffeId | None,
        settings: HboneSettings,
        handler: StreamHandler | None = None,
        idle_timeout: float | None = None,
        peer_address: tuple[str, int] | None = None,
        client_side: bool | None = None,
        cancel_on_reset: bool = False,
    ) -> None:
        """``cancel_on_reset``: a stream the peer resets (or breaks the protocol on) cancels
        its handler even after the handler answered (an L7 proxy: the request is abandoned,
        the app must hear it); otherwise only before (a tunnel still relays what the peer
        finished sending)."""
        if client_side is None:
            if not isinstance(transport, TlsStream):
                raise TypeError("say client_side= for a transport other than TlsStream")
            client_side = not transport.server_side
        super().__init__(
            transport,
            settings=settings,
            client_side=client_side,
            peer=peer,
            peer_address=peer_address,
        )
        self._handler = handler
        self._idle_timeout = idle_timeout
        self.reserved = 0  # client streams promised by the pool, not yet opened
        self._io_scope: trio.CancelScope | None = None
        self._handlers: trio.Nursery | None = None
        self._cancel_answered = cancel_on_reset
        self._handler_scopes: dict[H2Stream, trio.CancelScope] = {}  # each running handler's
        self._transport_closed = False
        self._pings: dict[bytes, trio.Event] = {}  # PINGs in flight by their payload
        self._ping_count = 0
        self._pings_answered = 0

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            streams=len(self.streams),
            reserved=self.reserved,
            send_window=self.send_window,
            receive_window=self.recv_window.statistics(),
            bytes_received=self.bytes_received,
            available=self.is_available(),
            closed=self.is_closed(),
            goaway=self.goaway.statistics(),
            pings_sent=self._ping_count,
            pings_answered=self._pings_answered,
        )

    # ---- questions a pool asks ------------------------------------------------

    @property
    def stream_limit(self) -> int:
        peer_limit = self.h2.remote.max_concurrent_streams
        return min(self.settings.max_concurrent_streams, peer_limit)

    def is_available(self) -> bool:
        """May another stream be opened on this connection right now?"""
        return (
            self.error is None
            and self.goaway.may_open()
            and len(self.streams) + self.reserved < self.stream_limit
        )

    def is_closed(self) -> bool:
        return self.error is not None

    def is_idle(self) -> bool:
        return not self.streams and not self.reserved

    # ---- running --------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the connection ends; every handler task finishes before this returns."""
        try:
            async with trio.open_nursery() as handlers:
                self._handlers = handlers
                with trio.CancelScope() as io_scope:
                    self._io_scope = io_scope
                    if self.error is None:
                        async with trio.open_nursery() as io:
                            io.start_soon(self._run_guarded, self.read_loop)
                            io.start_soon(self._run_guarded, self._write_loop)
                            io.start_soon(self._run_guarded, self._keepalive_loop)
                            if self._idle_timeout is not None:
                                io.start_soon(self._run_guarded, self._idle_loop)
                self.fail(self.error or _closed())
                # Now, not after the handlers: what was queued (the GOAWAY, the last
                # END_STREAM of a drained connection) leaves, and the peer hears the end.
                await self._close_transport()
        finally:
            self.fail(_closed())
            await self._close_transport()

    def close(self, reason: str = "closed by owner") -> None:
        """Say GOAWAY and end the connection now; :meth:`serve` returns soon after."""
        self.send_goaway(self.h2.highest_inbound_stream_id)
        self.fail(HboneConnectionError(reason, code=ErrorCodes.NO_ERROR))

    async def graceful_goaway(self) -> None:
        """Stop taking new streams and let the open ones finish (RFC 9113 §6.8).

        First GOAWAY(2^31-1), so a stream the peer is opening right now still
        counts; after a PING round trip (the peer has seen it), GOAWAY with the
        real last stream id: streams above it are refused, those at or below it
        run to completion, and the connection closes when the last one ends.
        Returns once the final GOAWAY is queued; bound the drain with
        :meth:`serve`'s caller (cancel, or :meth:`close`, at a deadline).
        """
        if self.error is not None or self.goaway.final_sent:
            await trio.lowlevel.checkpoint()
            return
        self.send_goaway(frames.MAX_STREAM_ID)
        with trio.move_on_after(self.settings.ping_timeout):
            with contextlib.suppress(HboneConnectionError):  # gone meanwhile: nothing to drain
                await self.ping()
        self.send_goaway(self.h2.highest_inbound_stream_id)
        if not self.streams:
            self.drained()

    def drained(self) -> None:
        self.close("GOAWAY, and no stream left")

    def failing(self) -> None:
        if self._io_scope is not None:
            self._io_scope.cancel()
        for stream in self._handler_scopes:  # every stream was reset: as by the peer
            self.reset_by_peer(stream)
        for unanswered in self._pings.values():
            unanswered.set()  # no answer will come: ping() raises the connection's error

    async def _write_loop(self) -> None:
        await self.writer.run(self.wake_space_waiters)

    async def _run_guarded(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except HboneConnectionError as exc:
            self.fail(exc)
        except TRANSPORT_ERRORS as exc:
            error = HboneConnectionError(str(exc))
            error.__cause__ = exc  # the layer below broke: the owner may tell it apart
            self.fail(error)

    async def _close_transport(self) -> None:
        if self._transport_closed:
            return
        self._transport_closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            with contextlib.suppress(*TRANSPORT_ERRORS, OSError):
                await self.writer.flush()  # e.g. GOAWAY after a protocol error
            await self.transport.aclose()

    # ---- server side ----------------------------------------------------------

    def stream_received(self, stream: H2Stream) -> None:
        if self._handler is None or self._handlers is None:
            super().stream_received(stream)
            return
        # The scope exists from now on, not from when the task starts: a reset read in the
        # same batch as the request cancels the handler before it dials anyone.
        self._handler_scopes[stream] = trio.CancelScope()
        self._handlers.start_soon(self._run_handler, stream)

    def reset_by_peer(self, stream: H2Stream) -> None:
        # A stream reset before we answered it: its handler's work (a dial) is for nobody;
        # after, too, with cancel_on_reset (the app must hear that the request was dropped).
        if stream.headers_sent and not self._cancel_answered:
            return
        if (scope := self._handler_scopes.get(stream)) is not None:
            scope.cancel()

    async def _run_handler(self, stream: H2Stream) -> None:
        assert self._handler is not None
        scope = self._handler_scopes[stream]
        try:
            with scope:
                await self._handler(stream)
        except Exception:
            log.exception("hbone_handler_failed", peer=str(self.peer), stream_id=stream.stream_id)
            if not stream.headers_sent and not stream.is_done():
                stream.reject_nowait(Reason.INTERNAL_ERROR)
        finally:
            del self._handler_scopes[stream]
            if not stream.headers_sent and not stream.is_done():
                stream.reject_nowait(Reason.INTERNAL_ERROR)  # the handler gave no answer
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # ---- client side ----------------------------------------------------------

    def start_request(
        self, headers: Sequence[tuple[str, str]], *, end_stream: bool = False
    ) -> H2Stream:
        """Send request headers on a new stream; ``wait_response`` awaits the answer."""
        if self.error is not None:
            raise self.error
        if not self.goaway.may_open():
            raise HboneRetryableError(
                "this connection is going away (GOAWAY); open the stream on another one"
            )
        stream = self.new_stream(self.h2.get_next_available_stream_id())
        stream.send_headers(headers, end_stream=end_stream)
        return stream

    async def open_stream(
        self, authority: str, headers: Sequence[tuple[str, str]] = ()
    ) -> H2Stream:
        """Send ``CONNECT authority`` and return the stream once the peer answers 200."""
        stream = self.start_request([(":method", "CONNECT"), (":authority", authority), *headers])
        timeout = self.settings.stream_open_timeout
        try:
            with trio.move_on_after(timeout) as deadline:
                await stream.wait_connect_answer()
            if deadline.cancelled_caught:
                raise HboneStreamTimeout(
                    f"no answer to CONNECT {authority} within {timeout:g}s"
                    " (is the destination's HBONE server overloaded or stalled?)"
                )
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return stream

    # ---- keepalive and idleness -----------------------------------------------

    async def ping(self) -> None:
        """Send a PING and wait for its answer (works after GOAWAY, either way); raise
        the connection's error if it ends first."""
        if self.error is not None:
            raise self.error
        self._ping_count += 1
        data = self._ping_count.to_bytes(8, "big")
        answered = self._pings[data] = trio.Event()
        try:
            self.h2.send_ping(data)
            self.kick()
            await answered.wait()
        finally:
            unanswered = self._pings.pop(data, None) is not None  # ping_acked takes it out
        if unanswered and self.error is not None:
            raise self.error

    def ping_acked(self, data: bytes) -> None:
        if (answered := self._pings.pop(data, None)) is not None:
            self._pings_answered += 1
            answered.set()

    async def _keepalive_loop(self) -> None:
        settings = self.settings
        while True:
            await trio.sleep(settings.ping_interval)
            with trio.move_on_after(settings.ping_timeout):
                await self.ping()
                continue
            raise HboneConnectionError(
                f"peer did not answer a PING within {settings.ping_timeout:g}s; "
                "it is gone or stalled (is the network between the nodes partitioned?)"
            )

    async def _idle_loop(self) -> None:
        assert self._idle_timeout is not None
        while True:
            idle_for = trio.current_time() - self.idle_since
            if self.is_idle() and idle_for >= self._idle_timeout:
                self.close("idle")
                return
            await trio.sleep(max(self._idle_timeout - idle_for, self._idle_timeout / 10))


HboneConnection = Http2Connection  # HBONE: this connection over mTLS, carrying CONNECT


def _closed() -> HboneConnectionError:
    return HboneConnectionError("connection closed", code=ErrorCodes.NO_ERROR)
