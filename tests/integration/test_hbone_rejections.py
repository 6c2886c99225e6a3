"""HBONE refuses peers that do not prove an acceptable identity, and says why."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from collections.abc import Iterator, MutableMapping
from functools import partial
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from mesh.hbone import HboneError, HboneSettings
from mesh.hbone.client import HboneConnectError, open_hbone_pool
from mesh.hbone.server import serve_hbone
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.pending import PendingLimits, PendingWork
from mesh.reason import Reason
from mesh.tls import TlsError, TlsStream, bootstrap_client_context
from tests.conftest import CLIENT_ID, SERVER_ID
from tests.integration.hbone_support import (
    AUTHORITY,
    client_pool,
    connect,
    echo_handler,
    start_server,
)
from tests.pki import Pki, make_root
from tests.waiting import wait_until

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def rejected_rules(logs: Logs, event: str = "hbone_handshake_rejected") -> list[object]:
    return [entry.get("rule") for entry in logs if entry["event"] == event]


async def try_client(address: tuple[str, int], cert: WorkloadCertificate) -> None:
    """Open a stream with ``cert``; raise what the client sees."""
    async with open_hbone_pool(lambda _s: cert) as pool:
        stream = await pool.connect(
            source=cert.identity, address=address, authority=AUTHORITY, expected=[SERVER_ID]
        )
        await stream.send_all(b"hello")
        assert await stream.receive_some() == b"hello"


async def expect_server_rejects(
    root: Pki, client_cert: WorkloadCertificate, rule: str, logs: Logs
) -> None:
    handled: list[object] = []

    async def handler(request: object) -> None:
        handled.append(request)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, handler, root.issue(SERVER_ID))
            with pytest.raises(HboneError):
                await try_client(address, client_cert)
            await wait_for_log(logs, rule)
            nursery.cancel_scope.cancel()
    assert handled == [], "a rejected peer reached the handler"


async def wait_for_log(logs: Logs, rule: str, event: str = "hbone_handshake_rejected") -> None:
    await wait_until(lambda: rule in rejected_rules(logs, event))


async def test_no_client_certificate_is_rejected(root: Pki, logs: Logs) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, root.issue(SERVER_ID))
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            await sock.connect(address)
            tls = TlsStream(sock, bootstrap_client_context(root.bundle), server_side=False)
            with pytest.raises(TlsError, match=r"CERTIFICATE_REQUIRED|alert"):
                await _handshake_then_read(tls)
            await tls.aclose()
            await wait_for_log(logs, "no-certificate")
            nursery.cancel_scope.cancel()


async def _handshake_then_read(tls: TlsStream) -> None:
    await tls.handshake()  # TLS 1.3: the server's alert arrives with the first read
    await tls.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    while await tls.receive_some():
        pass


async def test_certificate_from_another_ca_is_rejected(root: Pki, logs: Logs) -> None:
    stranger = make_root("another CA").issue(CLIENT_ID)
    await expect_server_rejects(root, stranger, "chain", logs)


async def test_wrong_trust_domain_is_rejected(root: Pki, logs: Logs) -> None:
    foreign = root.issue(SpiffeId("other.domain", "default", "client"))
    await expect_server_rejects(root, foreign, "trust-domain", logs)


async def test_expired_certificate_is_rejected(root: Pki, logs: Logs) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = root.issue(
        CLIENT_ID, not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1)
    )
    await expect_server_rejects(root, expired, "expired", logs)


async def test_certificate_with_two_uri_sans_is_rejected(root: Pki, logs: Logs) -> None:
    key, cert = root.issue_raw([str(CLIENT_ID), "spiffe://cluster.local/ns/default/sa/admin"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, root.issue(SERVER_ID))
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            await sock.connect(address)
            tls = TlsStream(sock, root.raw_client_context(key, cert), server_side=False)
            await tls.handshake()
            await tls.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            # The server verified us after the handshake and hung up without a word of HTTP/2
            # (a clean EOF, or a reset because it never read our preface).
            answer = b""
            with contextlib.suppress(TlsError):  # "connection reset" is a hang-up too
                answer = await tls.receive_some()
            assert answer == b""
            await tls.aclose()
            await wait_for_log(logs, "uri-san-count")
            nursery.cancel_scope.cancel()


async def client_against_server(
    root: Pki, server_cert: WorkloadCertificate, expected: SpiffeId = SERVER_ID
) -> HboneConnectError:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, server_cert)
            client_cert = root.issue(CLIENT_ID)
            async with open_hbone_pool(lambda _s: client_cert) as pool:
                with pytest.raises(HboneConnectError) as caught:
                    await pool.connect(
                        source=CLIENT_ID, address=address, authority=AUTHORITY, expected=[expected]
                    )
            nursery.cancel_scope.cancel()
    return caught.value


async def test_server_with_unexpected_identity_is_refused(root: Pki, logs: Logs) -> None:
    impostor = root.issue(SpiffeId("cluster.local", "default", "impostor"))
    error = await client_against_server(root, impostor)
    assert "unexpected-identity" in str(error)
    assert "impostor" in str(error)
    assert isinstance(error, HboneConnectError)
    assert (error.rule, error.reason) == ("unexpected-identity", Reason.IDENTITY_MISMATCH)
    assert "hbone_dial_rejected" not in [e["event"] for e in logs]  # the caller logs it, once


async def test_server_from_another_ca_is_refused(root: Pki, logs: Logs) -> None:
    error = await client_against_server(root, make_root("rogue").issue(SERVER_ID))
    assert "chain" in str(error)


async def test_server_in_another_trust_domain_is_refused(root: Pki) -> None:
    foreign = SpiffeId("other.domain", "default", "server")
    error = await client_against_server(root, root.issue(foreign), expected=foreign)
    assert "trust-domain" in str(error)


async def test_expired_server_certificate_is_refused(root: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = root.issue(
        SERVER_ID, not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(hours=1)
    )
    error = await client_against_server(root, expired)
    assert "expired" in str(error)


async def test_unreachable_destination_names_the_address_and_a_hint(root: Pki) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    cert = root.issue(CLIENT_ID)
    with trio.fail_after(10):
        async with open_hbone_pool(lambda _s: cert) as pool:
            with pytest.raises(HboneConnectError, match=f"127.0.0.1:{port}.*reachable"):
                await connect(pool, ("127.0.0.1", port))


async def _dial_from(ip: str, address: tuple[str, int]) -> trio.socket.SocketType:
    """A TCP connection from ``ip`` (nothing sent: alone, it never starts a handshake)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((ip, 0))
    await sock.connect(address)
    return sock


async def test_connections_past_a_sources_pending_limit_are_reset_at_once(root: Pki) -> None:
    """Handshakes in progress are pending work: a source that opens connections and never
    speaks TLS gets its next ones reset, while another source's clients get through."""
    work: PendingWork[object] = PendingWork(PendingLimits(per_source_pending=4, pending=8))
    silent: list[trio.socket.SocketType] = []
    cert = root.issue(SERVER_ID)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(serve_hbone, echo_handler, certificate=lambda: cert, port=0, pending=work)
            )
            try:
                for _ in range(4):
                    silent.append(await _dial_from("127.0.0.9", address))
                await wait_until(lambda: work.statistics("127.0.0.9").pending == 4)
                refused = await _dial_from("127.0.0.9", address)
                with refused, pytest.raises(ConnectionResetError):
                    await refused.recv(1)  # reset at once, not after a handshake timeout
                await try_client(address, root.issue(CLIENT_ID))  # 127.0.0.1 is not held up
            finally:
                for sock in silent:
                    sock.close()
            # The silent ones are gone: their handshakes fail and make room again.
            await wait_until(lambda: work.statistics("127.0.0.9").pending == 0)
            async with open_hbone_pool(
                lambda _s: root.issue(CLIENT_ID), dial=partial(_dial_from, "127.0.0.9")
            ) as pool:
                stream = await pool.connect(
                    source=CLIENT_ID, address=address, authority=AUTHORITY, expected=[SERVER_ID]
                )
                async with stream:
                    await stream.send_all(b"hello")
                    assert await stream.receive_some() == b"hello"
            nursery.cancel_scope.cancel()
    assert work.statistics().refused == 1


async def test_a_flood_of_bad_handshakes_logs_a_few_lines_and_counts_the_rest(
    root: Pki, logs: Logs
) -> None:
    """200 connections that are not TLS at all, 20 at a time: the first rejection is
    logged at once, the rest are held back and counted (``suppressed=N``), one summary
    per window; meanwhile a healthy client is served."""
    settings = HboneSettings(rejection_log_window=2.0)
    flood = 200

    async def bad_handshake(address: tuple[str, int], limit: trio.CapacityLimiter) -> None:
        async with limit:
            stream = await trio.open_tcp_stream(*address)
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await stream.receive_some()  # the server closes it
            await stream.aclose()

    def counted(entries: Logs) -> int:
        return sum(("src" in e) + int(e.get("suppressed", 0)) for e in entries)

    def lines() -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e["event"] == "hbone_handshake_rejected"]

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await start_server(nursery, echo_handler, root.issue(SERVER_ID), settings)
            async with trio.open_nursery() as flooding:
                limit = trio.CapacityLimiter(20)
                for _ in range(flood):
                    flooding.start_soon(bad_handshake, address, limit)
                await wait_until(lambda: lines())
                assert "suppressed" not in lines()[0]  # the first one, at once
                async with client_pool(root) as pool:  # a healthy client, served meanwhile
                    stream = await connect(pool, address)
                    await stream.send_all(b"still served")
                    assert await stream.receive_some() == b"still served"
            # A line with a source is a rejection (and the N held back before it); a summary
            # line, without one, stands for the N it held back.
            await wait_until(lambda: counted(lines()) == flood, seconds=10)  # the summary came
            nursery.cancel_scope.cancel()
    assert 2 <= len(lines()) <= 6, lines()
    assert {e["rule"] for e in lines()} == {lines()[0]["rule"]}
