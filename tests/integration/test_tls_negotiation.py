"""HBONE speaks only TLS 1.3 with ALPN ``h2``, on both ends: a peer that offers
less is refused with a reason, and the server keeps serving everyone else."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from mesh.hbone import HboneRequest
from mesh.hbone.client import HboneConnectError
from mesh.identity import WorkloadCertificate
from mesh.net import open_listener
from mesh.reason import Reason
from mesh.tls import ALPN_H2, TlsError, TlsStream, _memory_file
from tests.conftest import CLIENT_ID, SERVER_ID
from tests.integration.hbone_support import client_pool, connect, echo_handler, start_server
from tests.pki import Pki
from tests.waiting import wait_until

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def events(logs: Logs, event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


def stdlib_context(
    purpose: int,
    cert: WorkloadCertificate,
    *,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A plain stdlib context that presents a valid mesh certificate and trusts the
    mesh root, but negotiates what it is told to, not what the mesh requires."""
    ctx = ssl.SSLContext(purpose)
    ctx.maximum_version = maximum
    if purpose == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.bundle.pem().decode())
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    with _memory_file(cert.chain_pem() + cert.key_pem()) as path:
        ctx.load_cert_chain(path)
    return ctx


async def open_stdlib_tls(address: tuple[str, int], ctx: ssl.SSLContext) -> trio.SSLStream[Any]:
    """A TLS connection made by the stdlib (through ``trio.SSLStream``), not by mesh.tls."""
    tcp = await trio.open_tcp_stream(*address)
    return trio.SSLStream(tcp, ctx, server_hostname=None)


async def assert_hung_up_without_http2(tls: trio.SSLStream[Any]) -> None:
    """The server closed the connection without sending a single HTTP/2 frame."""
    answer: bytes | bytearray = b""
    with contextlib.suppress(trio.BrokenResourceError):  # a reset is a hang-up too
        await tls.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = await tls.receive_some()
    assert answer == b""


async def assert_serves_a_healthy_client(root: Pki, address: tuple[str, int]) -> None:
    async with client_pool(root) as pool:
        stream = await connect(pool, address)
        await stream.send_all(b"still serving")
        assert await stream.receive_some() == b"still serving"


class RecordingEcho:
    def __init__(self) -> None:
        self.peers: list[str] = []

    async def __call__(self, request: HboneRequest) -> None:
        self.peers.append(str(request.peer))
        await echo_handler(request)


# -- the HBONE server refuses clients -----------------------------------------------------


async def test_server_refuses_a_client_that_offers_at_most_tls_1_2(root: Pki, logs: Logs) -> None:
    ctx = stdlib_context(
        ssl.PROTOCOL_TLS_CLIENT,
        root.issue(CLIENT_ID),
        maximum=ssl.TLSVersion.TLSv1_2,
        alpn=[ALPN_H2],
    )
    handler = RecordingEcho()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, handler, root.issue(SERVER_ID))
            async with await open_stdlib_tls(address, ctx) as tls:
                with pytest.raises(trio.BrokenResourceError) as refused:
                    await tls.do_handshake()
            assert isinstance(refused.value.__cause__, ssl.SSLError)
            assert "PROTOCOL_VERSION" in str(refused.value.__cause__)
            await wait_until(lambda: events(logs, "hbone_handshake_rejected"))
            assert handler.peers == [], "a TLS 1.2 client reached the handler"
            await assert_serves_a_healthy_client(root, address)
            nursery.cancel_scope.cancel()
    [rejected] = events(logs, "hbone_handshake_rejected")
    assert rejected["rule"] == "tls-version"
    assert "UNSUPPORTED_PROTOCOL" in rejected["reason"]
    assert "TLS 1.3 only" in rejected["reason"]
    assert handler.peers == [str(CLIENT_ID)]


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "http1.1"])
async def test_server_refuses_a_client_that_does_not_negotiate_h2(
    root: Pki, logs: Logs, alpn: list[str] | None
) -> None:
    ctx = stdlib_context(ssl.PROTOCOL_TLS_CLIENT, root.issue(CLIENT_ID), alpn=alpn)
    handler = RecordingEcho()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, handler, root.issue(SERVER_ID))
            async with await open_stdlib_tls(address, ctx) as tls:
                await tls.do_handshake()  # TLS itself succeeds (valid certificate, TLS 1.3)
                assert tls.version() == "TLSv1.3"
                assert tls.selected_alpn_protocol() is None
                await assert_hung_up_without_http2(tls)  # ... but no HBONE on top of it
            await wait_until(lambda: events(logs, "hbone_handshake_rejected"))
            await assert_serves_a_healthy_client(root, address)
            nursery.cancel_scope.cancel()
    [rejected] = events(logs, "hbone_handshake_rejected")
    assert rejected["rule"] == "alpn"
    assert "did not negotiate ALPN 'h2' (got None)" in rejected["reason"]
    assert "HBONE endpoint" in rejected["reason"]
    assert handler.peers == [str(CLIENT_ID)]


# -- the HBONE client (the pool) refuses servers ------------------------------------------


async def serve_plain_tls(
    ctx: ssl.SSLContext,
    errors: list[str],
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A TLS server that is not HBONE: handshakes with ``ctx``, then waits for EOF."""
    listener = await open_listener("127.0.0.1", 0)
    with listener:
        task_status.started(listener.getsockname()[:2])
        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await listener.accept()
                tls = TlsStream(sock, ctx, server_side=True)
                nursery.start_soon(_serve_plain_connection, tls, errors)


async def _serve_plain_connection(tls: TlsStream, errors: list[str]) -> None:
    try:
        await tls.handshake()
        while await tls.receive_some():
            pass
    except TlsError as exc:
        errors.append(str(exc))
    finally:
        await tls.aclose()


async def dial_plain_tls_server(root: Pki, ctx: ssl.SSLContext) -> HboneConnectError:
    errors: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_plain_tls, ctx, errors)
            async with client_pool(root) as pool:
                with pytest.raises(HboneConnectError) as caught:
                    await connect(pool, address)
                assert pool.statistics()["connections"] == 0
            nursery.cancel_scope.cancel()
    return caught.value


async def test_pool_refuses_a_server_that_speaks_at_most_tls_1_2(root: Pki, logs: Logs) -> None:
    ctx = stdlib_context(
        ssl.PROTOCOL_TLS_SERVER,
        root.issue(SERVER_ID),
        maximum=ssl.TLSVersion.TLSv1_2,
        alpn=[ALPN_H2],
    )
    error = await dial_plain_tls_server(root, ctx)
    assert "(tls-version)" in str(error)
    assert "PROTOCOL_VERSION" in str(error) or "UNSUPPORTED_PROTOCOL" in str(error)
    assert isinstance(error, HboneConnectError)
    assert (error.rule, error.reason) == ("tls-version", Reason.TLS_FAILED)


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "http1.1"])
async def test_pool_refuses_a_server_that_does_not_select_h2(
    root: Pki, logs: Logs, alpn: list[str] | None
) -> None:
    ctx = stdlib_context(ssl.PROTOCOL_TLS_SERVER, root.issue(SERVER_ID), alpn=alpn)
    error = await dial_plain_tls_server(root, ctx)
    assert "did not negotiate ALPN 'h2' (got None)" in str(error)
    assert "is it an HBONE endpoint?" in str(error)
    assert isinstance(error, HboneConnectError)
    assert (error.rule, error.reason) == ("alpn", Reason.TLS_FAILED)
