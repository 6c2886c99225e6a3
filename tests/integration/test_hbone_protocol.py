"""HBONE under bad input and failure: a broken peer is cut off and logged, every
other connection keeps its bytes; dead peers are detected; CONNECT answers."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterator, MutableMapping
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
import trio
from structlog.testing import capture_logs

from mesh.hbone import HboneConnection, HboneRequest, HboneSettings, HboneStreamRefused, frames
from mesh.reason import Reason
from mesh.tls import TlsStream, client_context
from tests.conftest import CLIENT_ID, SERVER_ID
from tests.integration.hbone_support import (
    client_pool,
    connect,
    echo_handler,
    hash_handler,
    read_all,
    start_server,
)
from tests.integration.relay import Relay
from tests.pki import Pki
from tests.waiting import wait_until

Logs = list[MutableMapping[str, Any]]
PREFACE = frames.CONNECTION_PREFACE
EMPTY_SETTINGS = frames.frame_header(0, 0x4, 0, 0)
CONNECT_BLOCK = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", "10.0.0.2:80")])


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


MALFORMED = {
    "not-http2": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64,
    "oversized-frame": PREFACE
    + EMPTY_SETTINGS
    + frames.frame_header(frames.MAX_FRAME_SIZE, 0, 0, 1),
    "data-on-stream-0": PREFACE + EMPTY_SETTINGS + frames.frame_header(4, 0, 0, 0) + b"abcd",
    "zero-window-update": PREFACE + EMPTY_SETTINGS + frames.frame_header(4, 0x8, 0, 0) + bytes(4),
    "bad-hpack": PREFACE + EMPTY_SETTINGS + frames.frame_header(6, 0x1, 0x5, 1) + b"\xff" * 6,
    "bad-padding": PREFACE
    + EMPTY_SETTINGS
    + frames.frame_header(len(CONNECT_BLOCK), 0x1, 0x4, 1)
    + CONNECT_BLOCK
    + frames.frame_header(3, 0x0, 0x8, 1)
    + b"\x09ab",
    "data-on-idle-stream": PREFACE + EMPTY_SETTINGS + frames.frame_header(3, 0, 0, 7) + b"abc",
    "settings-bad-length": PREFACE + frames.frame_header(5, 0x4, 0, 0) + b"\0" * 5,
    "ping-on-a-stream": PREFACE + EMPTY_SETTINGS + frames.frame_header(8, 0x6, 0, 1) + bytes(8),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_http2_closes_only_the_offending_connection(
    root: Pki, logs: Logs, case: str
) -> None:
    payload = os.urandom(32 * 1024 * 1024)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, hash_handler, root.issue(SERVER_ID))
            async with client_pool(root) as pool:
                healthy = await connect(pool, address)
                await healthy.send_all(payload[: len(payload) // 2])

                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                await sock.connect(address)
                bad = TlsStream(sock, client_context(root.issue(CLIENT_ID)), server_side=False)
                await bad.handshake()
                await bad.send_all(MALFORMED[case])
                answer = bytearray()
                while data := await bad.receive_some():  # the server must hang up on us
                    answer += data
                await bad.aclose()

                await healthy.send_all(payload[len(payload) // 2 :])
                await healthy.send_eof()
                digest = (await read_all(healthy)).decode()
                await healthy.aclose()
            nursery.cancel_scope.cancel()
    assert digest == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}"
    failures = [e for e in logs if e["event"] == "hbone_connection_failed"]
    assert len(failures) == 1, failures
    assert "HTTP/2" in str(failures[0]["reason"]) or "preface" in str(failures[0]["reason"])
    if case != "not-http2":
        assert _has_goaway(bytes(answer)), "server closed without GOAWAY"


def _has_goaway(data: bytes) -> bool:
    pos = 0
    while len(data) - pos >= 9:
        header = frames.parse_header(data, pos)
        if header.type == 0x7:
            return True
        pos += 9 + header.length
    return False


async def test_a_vanished_peer_fails_its_streams_and_no_others(root: Pki) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, root.issue(SERVER_ID))
            doomed_relay, other_relay = Relay(address), Relay(address)
            doomed_addr = await nursery.start(doomed_relay.serve)
            other_addr = await nursery.start(other_relay.serve)
            async with client_pool(root) as pool:
                doomed = [await connect(pool, doomed_addr) for _ in range(3)]
                survivor = await connect(pool, other_addr)
                for stream in [*doomed, survivor]:
                    await stream.send_all(b"before")
                    assert await stream.receive_some() == b"before"
                doomed_relay.cut()
                for stream in doomed:
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.receive_some()
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.send_all(b"after")
                big = os.urandom(8 * 1024 * 1024)
                async with trio.open_nursery() as io:
                    io.start_soon(survivor.send_all, big)
                    got = bytearray()
                    while len(got) < len(big):
                        got += await survivor.receive_some()
                assert got == big
                await survivor.aclose()
                for stream in doomed:
                    await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_ping_keepalive_detects_a_stalled_peer(root: Pki) -> None:
    settings = HboneSettings(ping_interval=0.2, ping_timeout=0.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, root.issue(SERVER_ID))
            relay = Relay(address)
            relay_addr = await nursery.start(relay.serve)
            async with client_pool(root, settings) as pool:
                stream = await connect(pool, relay_addr)
                await stream.send_all(b"hi")
                assert await stream.receive_some() == b"hi"
                conn = stream.connection
                assert isinstance(conn, HboneConnection)
                # Several PING rounds pass, answered, while the peer is alive.
                await wait_until(lambda: conn.statistics().pings_answered >= 3)
                assert pool.statistics()["connections"] == 1
                relay.freeze()
                with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="PING"):
                    await stream.receive_some()
                assert pool.statistics()["connections"] == 0
                # The dead connection is gone from the pool: the next stream dials anew.
                fresh = await connect(pool, relay_addr)
                await fresh.send_all(b"again")
                assert await fresh.receive_some() == b"again"
                assert pool.statistics()["connections_opened"] == 2
                await fresh.aclose()
                relay.cut()
            nursery.cancel_scope.cancel()


async def test_connect_answers_reach_the_client(root: Pki) -> None:
    async def judge(request: HboneRequest) -> None:
        port = request.destination()[1]
        if port == 1:
            await request.reject(Reason.POLICY_DENIED)
        elif port == 2:
            raise RuntimeError("upstream exploded")
        elif port == 3:
            return  # never answers
        else:
            await echo_handler(request)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, judge, root.issue(SERVER_ID))
            async with client_pool(root) as pool:

                async def open_to(authority: str) -> HboneStreamRefused:
                    with pytest.raises(HboneStreamRefused) as refused:
                        await pool.connect(
                            source=CLIENT_ID,
                            address=address,
                            authority=authority,
                            expected=[SERVER_ID],
                        )
                    return refused.value

                denied = await open_to("10.0.0.2:1")
                # The source learns the destination's reason as a value, and nothing more.
                assert (denied.status, denied.reason) == (403, Reason.POLICY_DENIED)
                assert "allow-frontend" not in str(denied)
                failed = await open_to("10.0.0.2:2")
                assert (failed.status, failed.reason) == (500, Reason.INTERNAL_ERROR)
                unanswered = await open_to("10.0.0.2:3")
                assert (unanswered.status, unanswered.reason) == (500, Reason.INTERNAL_ERROR)
                bad = await open_to("not-an-ip:80")
                assert (bad.status, bad.reason) == (400, Reason.BAD_REQUEST)
                assert (await open_to("10.0.0.2")).status == 400
                # The connection survived every refusal.
                stream = await pool.connect(
                    source=CLIENT_ID, address=address, authority="10.0.0.2:80", expected=[SERVER_ID]
                )
                await stream.send_all(b"still here")
                assert await stream.receive_some() == b"still here"
                await stream.aclose()
                assert pool.statistics()["connections_opened"] == 1
            nursery.cancel_scope.cancel()


async def test_server_sees_identity_and_istio_headers(root: Pki) -> None:
    seen: list[HboneRequest] = []

    async def record(request: HboneRequest) -> None:
        seen.append(request)
        await echo_handler(request)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, record, root.issue(SERVER_ID))
            async with client_pool(root) as pool:
                stream = await pool.connect(
                    source=CLIENT_ID,
                    address=address,
                    authority="10.1.2.3:8080",
                    expected=[SERVER_ID],
                    source_address="10.1.0.7",
                )
                await stream.aclose()
            nursery.cancel_scope.cancel()
    (request,) = seen
    assert request.peer == CLIENT_ID
    assert request.destination() == ("10.1.2.3", 8080)
    assert request.header("forwarded") == "for=10.1.0.7"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", request.header("traceparent") or "")


async def test_idle_connections_close_after_the_timeout(root: Pki) -> None:
    settings = HboneSettings(idle_timeout=0.3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, root.issue(SERVER_ID))
            async with client_pool(root, settings) as pool:
                stream = await connect(pool, address)
                await trio.sleep(0.6)  # busy connections are not idle
                assert pool.statistics()["connections"] == 1
                await stream.send_eof()
                assert await read_all(stream) == b""
                await stream.aclose()
                await wait_until(lambda: pool.statistics()["connections"] == 0)
            nursery.cancel_scope.cancel()


async def test_stock_h2_peer_with_padding_and_flow_control(root: Pki) -> None:
    """A plain h2 client (not our tunnel code) sends padded DATA beyond one window;
    both sides' flow control must agree or h2 raises; the stream table ends empty."""
    connections: list[HboneConnection] = []

    async def echo_and_remember(request: HboneRequest) -> None:
        assert isinstance(request.connection, HboneConnection)
        connections.append(request.connection)
        await echo_handler(request)

    payload = os.urandom(9 * 1024 * 1024 + 123)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_and_remember, root.issue(SERVER_ID))
            received = await _stock_h2_echo(address, root, payload)
            server_conn = connections[0]
            await wait_until(lambda: server_conn.statistics().streams == 0)
            nursery.cancel_scope.cancel()
    assert received == payload


async def _stock_h2_echo(address: tuple[str, int], root: Pki, payload: bytes) -> bytes:
    tcp = await trio.open_tcp_stream(*address)
    tls = trio.SSLStream(tcp, client_context(root.issue(CLIENT_ID)), server_side=False)
    await tls.do_handshake()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.2:80")])
    send_lock = trio.Lock()
    window_opened = trio.Event()
    accepted = trio.Event()
    received = bytearray()

    async def flush() -> None:
        async with send_lock:
            if data := conn.data_to_send():
                await tls.send_all(data)

    async def sender() -> None:
        nonlocal window_opened
        await accepted.wait()
        view = memoryview(payload)
        while view:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size) - 11
            if room <= 0:
                window_opened = trio.Event()
                await window_opened.wait()
                continue
            n = min(room, len(view), 200_000)
            conn.send_data(sid, view[:n].tobytes(), pad_length=10)
            view = view[n:]
            await flush()
        conn.end_stream(sid)
        await flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await flush()
        ended = False
        while not ended:
            data = await tls.receive_some(65536)
            assert data, "server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    assert dict(event.headers or [])[b":status"] == b"200"
                    accepted.set()
                elif isinstance(event, h2.events.DataReceived):
                    received += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.WindowUpdated):
                    window_opened.set()
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            await flush()
    await tls.aclose()
    return bytes(received)
