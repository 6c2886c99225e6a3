"""Our HTTP/2 engine against nghttp2, an HTTP/2 stack that is neither ours nor
python-hyper's: ``nghttpd`` (Debian's nghttp2-server) as the server our client
talks to over mutual TLS 1.3 with ALPN ``h2``, and ``h2load`` (nghttp2-client)
driving our engine's server side over h2c and TLS.

What the tools can exercise, found by running them: nghttpd has no graceful
shutdown (SIGTERM ends it at once, with no GOAWAY), so against it we test its
flow-control windows, its SETTINGS_MAX_CONCURRENT_STREAMS and an abrupt death;
graceful GOAWAY from a peer is Go's (``test_h2_interop_go.py``). h2load does not
reconnect after a GOAWAY: it counts the requests it never got to send as failed,
so during our two-phase GOAWAY we assert that every request it *started* was
answered 200 in full and none was reset. Every process is started on 127.0.0.1
and killed by its PID; the tests skip, saying so, where the binaries are absent
(``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from mesh.hbone import H2Stream, HboneSettings, Http2Connection
from mesh.hbone.settings import HboneConnectionError, HboneRetryableError
from mesh.hbone.transport import StreamTransport
from mesh.identity import WorkloadCertificate
from mesh.tls import TlsStream, client_context, server_context
from tests.conftest import CLIENT_ID, SERVER_ID
from tests.pki import Pki
from tests.waiting import wait_until

SETTINGS = HboneSettings(stream_window=65_535, connection_window=256 * 1024)
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


def _tool(name: str, package: str) -> Path:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        pytest.skip(f"needs {name} (apt-get install {package}; .ci/run installs it)")
    return Path(found)


@pytest.fixture(scope="session")
def nghttpd() -> Path:
    return _tool("nghttpd", "nghttp2-server")


@pytest.fixture(scope="session")
def h2load() -> Path:
    return _tool("h2load", "nghttp2-client")


# ---- nghttpd as the server, our client over mutual TLS ---------------------------------


@dataclass
class Nghttpd:
    process: trio.Process
    address: tuple[str, int]
    htdocs: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(process: trio.Process, port: int) -> None:
    """Until ``process`` listens on loopback ``port`` (a connect succeeds), at most 10 s."""
    with trio.fail_after(10):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            try:
                probe = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await probe.aclose()
            return


@asynccontextmanager
async def nghttpd_server(
    binary: Path, cert: WorkloadCertificate, tmp: Path, *options: str
) -> AsyncIterator[Nghttpd]:
    """nghttpd on a free loopback port with a mesh certificate, asking for the client's
    (``-V``), echoing POST bodies; killed by its PID when the block ends."""
    (tmp / "key.pem").write_bytes(cert.key_pem())
    (tmp / "cert.pem").write_bytes(cert.chain_pem())
    htdocs = tmp / "htdocs"
    htdocs.mkdir(exist_ok=True)
    port = _free_port()
    process = await trio.lowlevel.open_process(
        [str(binary), "-a", "127.0.0.1", "-d", str(htdocs), "--echo-upload", "-V", *options,
         str(port), str(tmp / "key.pem"), str(tmp / "cert.pem")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_listening(process, port)
        yield Nghttpd(process, ("127.0.0.1", port), htdocs)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


@asynccontextmanager
async def mtls_client(cert: WorkloadCertificate, server: Nghttpd) -> AsyncIterator[Http2Connection]:
    """Our client connection over mutual TLS 1.3 (ALPN h2), the server's SPIFFE id verified."""
    sock = trio.socket.socket()
    await sock.connect(server.address)
    tls = TlsStream(sock, client_context(cert), server_side=False)
    await tls.handshake()
    peer = tls.verify_peer(trust_domain=SERVER_ID.trust_domain, expected=frozenset({SERVER_ID}))
    conn = Http2Connection(tls, peer=peer, settings=SETTINGS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        await conn.ping()  # answered after nghttpd's SETTINGS, which come first
        yield conn
        conn.close()


def request(method: str, path: str) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "nghttpd"), (":path", path)]


async def read_body(stream: H2Stream) -> tuple[str, bytes]:
    status = dict(await stream.wait_response())[":status"]
    body = bytearray()
    while data := await stream.receive_some():
        body += data
    return status, bytes(body)


async def post_echo(conn: Http2Connection, payload: bytes) -> tuple[str, bytes]:
    stream = conn.start_request(request("POST", "/echo"))
    await stream.send_all(payload)
    await stream.send_eof()
    answer = await read_body(stream)
    await stream.aclose()
    return answer


async def test_client_moves_bytes_both_ways_under_nghttpds_windows(
    nghttpd: Path, root: Pki, tmp_path: Path
) -> None:
    """nghttpd's stream window is 4 KiB (``-w 12``): our uploads wait for its
    WINDOW_UPDATEs; its 1 MiB download is beyond our windows: it waits for ours."""
    download = os.urandom(1 << 20)
    uploads = [os.urandom(300_000 + i) for i in range(3)]
    with trio.fail_after(30):
        async with nghttpd_server(
            nghttpd, root.issue(SERVER_ID), tmp_path, "-w", "12", "-W", "16"
        ) as server:
            (server.htdocs / "big").write_bytes(download)
            async with mtls_client(root.issue(CLIENT_ID), server) as conn:
                answers: dict[int, tuple[str, bytes]] = {}

                async def upload(i: int) -> None:
                    answers[i] = await post_echo(conn, uploads[i])

                async with trio.open_nursery() as nursery:
                    for i in range(len(uploads)):
                        nursery.start_soon(upload, i)
                    stream = conn.start_request(request("GET", "/big"), end_stream=True)
                    assert await read_body(stream) == ("200", download)
                assert answers == {i: ("200", data) for i, data in enumerate(uploads)}
                assert conn.statistics().streams == 0


async def test_client_keeps_to_nghttpds_stream_limit(
    nghttpd: Path, root: Pki, tmp_path: Path
) -> None:
    """nghttpd ``-m 2``: a third stream is refused retryably before it is sent (a pool
    would open it on another connection), and leaves nothing behind."""
    with trio.fail_after(30):
        async with (
            nghttpd_server(nghttpd, root.issue(SERVER_ID), tmp_path, "-m", "2") as server,
            mtls_client(root.issue(CLIENT_ID), server) as conn,
        ):
            assert conn.stream_limit == 2
            open_ = [conn.start_request(request("POST", "/echo")) for _ in range(2)]
            assert not conn.is_available()  # a pool stops choosing it
            with pytest.raises(HboneRetryableError, match="another connection"):
                conn.start_request(request("POST", "/echo"))
            for i, stream in enumerate(open_):
                await stream.send_all(b"%d" % i)
                await stream.send_eof()
                assert await read_body(stream) == ("200", b"%d" % i)
                await stream.aclose()
            assert conn.statistics().streams == 0  # the refused one is not counted
            assert conn.is_available()
            assert await post_echo(conn, b"after") == ("200", b"after")


async def test_nghttpd_killed_mid_stream_fails_only_its_connection(
    nghttpd: Path, root: Pki, tmp_path: Path
) -> None:
    """nghttpd has no graceful shutdown: SIGTERM ends it with no GOAWAY. The stream in
    flight on it fails at once (never hangs); a connection to another nghttpd goes on."""
    cert = root.issue(CLIENT_ID)
    server_cert = root.issue(SERVER_ID)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with trio.fail_after(30):
        async with (
            nghttpd_server(nghttpd, server_cert, tmp_path / "a") as doomed_server,
            nghttpd_server(nghttpd, server_cert, tmp_path / "b") as other_server,
            mtls_client(cert, doomed_server) as doomed,
            mtls_client(cert, other_server) as healthy,
        ):
            cut = doomed.start_request(request("POST", "/echo"))
            fine = healthy.start_request(request("POST", "/echo"))
            await cut.send_all(b"half a request")
            await fine.send_all(b"half a request")
            doomed_server.process.send_signal(signal.SIGTERM)
            assert await doomed_server.process.wait() == -signal.SIGTERM
            with pytest.raises(HboneConnectionError, match=r"peer closed|connection lost"):
                await cut.wait_response()
            await wait_until(doomed.is_closed)
            assert doomed.statistics().goaway.received_last_stream_id is None  # no GOAWAY
            await fine.send_all(b", and the rest")
            await fine.send_eof()
            assert await read_body(fine) == ("200", b"half a request, and the rest")


# ---- h2load driving our server side -----------------------------------------------------

BODY = os.urandom(20_000)
H2LOAD_SUMMARY = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout"
)


@dataclass
class OurServer:
    port: int
    connections: list[Http2Connection] = field(default_factory=list)
    answered: int = 0  # responses sent in full


@asynccontextmanager
async def our_server(tls_cert: WorkloadCertificate | None) -> AsyncIterator[OurServer]:
    """Our engine serving any request on loopback: the body is read, then 200 and
    ``BODY``. Over TLS 1.3 + ALPN h2 (no client certificate: h2load has none) when
    given a certificate, h2c otherwise."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = OurServer(listeners[0].socket.getsockname()[1])

    async def respond(stream: H2Stream) -> None:
        while await stream.receive_some():
            pass
        stream.send_headers([(":status", "200"), ("content-length", str(len(BODY)))])
        await stream.send_all(BODY)
        await stream.send_eof()
        server.answered += 1

    async def serve(tcp: trio.SocketStream) -> None:
        if tls_cert is None:
            transport: StreamTransport | TlsStream = StreamTransport(tcp)
        else:
            context = server_context(tls_cert, require_client_cert=False)
            transport = TlsStream(tcp.socket, context, server_side=True)
            with trio.fail_after(10):
                await transport.handshake()
        conn = Http2Connection(
            transport, peer=None, settings=SETTINGS, handler=respond, client_side=False
        )
        server.connections.append(conn)
        await conn.serve()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def run_h2load(binary: Path, url: str, *options: str) -> AsyncIterator[list[bytes]]:
    """h2load against ``url``; the list gets its output once it has exited. Killed by
    its PID if the block ends first."""
    process = await trio.lowlevel.open_process(
        [str(binary), *options, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    output: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                assert process.stdout is not None
                while data := await process.stdout.receive_some():
                    output.append(bytes(data))
                await process.wait()

            nursery.start_soon(collect)
            yield output
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


def summary(output: list[bytes]) -> dict[str, int]:
    text = b"".join(output).decode()
    found = H2LOAD_SUMMARY.search(text)
    assert found is not None, text
    return {key: int(value) for key, value in found.groupdict().items()}


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
async def test_h2load_gets_every_answer_under_its_small_windows(
    h2load: Path, root: Pki, tls: bool
) -> None:
    """2,000 requests on 4 connections, 20 streams each, with h2load's stream window
    1 KiB (``-w 10``): our DATA keeps to it, and every answer arrives whole."""
    cert = root.issue(SERVER_ID) if tls else None
    with trio.fail_after(60):
        async with our_server(cert) as server:
            url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/"
            options = ("-n", "2000", "-c", "4", "-m", "20", "-w", "10")
            async with run_h2load(h2load, url, *options) as out:
                pass
            result = summary(out)
    assert result == {"total": 2000, "started": 2000, "done": 2000, "succeeded": 2000,
                      "failed": 0, "errored": 0, "timeout": 0}  # fmt: skip
    assert b"status codes: 2000 2xx" in b"".join(out)
    assert b"(%d) data" % (2000 * len(BODY)) in b"".join(out)  # h2load's count of body bytes
    assert server.answered == 2000


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
async def test_h2load_during_our_graceful_goaway(h2load: Path, root: Pki, tls: bool) -> None:
    """Our two-phase GOAWAY on every connection while h2load has 20 streams in flight on
    each: every stream that reached us is answered 200 in full and none is refused or
    reset, and each connection closes with NO_ERROR once drained. h2load does not
    reconnect after a GOAWAY: it counts as failed what it never sent (and, as "started",
    the requests it queued after the GOAWAY arrived, which nghttp2 then declined to send,
    as RFC 9113 says), so the streams on the wire are counted on our side."""
    cert = root.issue(SERVER_ID) if tls else None
    with trio.fail_after(60):
        async with our_server(cert) as server:
            url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/"
            async with run_h2load(h2load, url, "-n", "5000", "-c", "4", "-m", "20") as out:
                await wait_until(lambda: server.answered >= 200, seconds=30)
                live = list(server.connections)
                async with trio.open_nursery() as nursery:
                    for conn in live:
                        nursery.start_soon(conn.graceful_goaway)
            await wait_until(lambda: all(conn.is_closed() for conn in live))
            result = summary(out)
    assert len(live) == 4
    last_ids = [conn.statistics().goaway.sent_last_stream_id or 0 for conn in live]
    on_the_wire = sum((last + 1) // 2 for last in last_ids)  # client streams: odd ids
    assert [conn.h2.highest_inbound_stream_id for conn in live] == last_ids  # none refused
    assert server.answered == on_the_wire  # every one that reached us, answered in full
    assert result["succeeded"] == server.answered  # and h2load got each, 200 and whole
    assert result["succeeded"] + result["failed"] == 5000
    assert result["timeout"] == 0
    assert b"status codes: %d 2xx, 0 3xx, 0 4xx, 0 5xx" % server.answered in b"".join(out)
    assert b"(%d) data" % (server.answered * len(BODY)) in b"".join(out)
    for conn in live:
        assert conn.error is not None
        assert conn.error.code == 0, conn.error  # NO_ERROR
