"""The CA's HTTP/2 API without sockets: our HTTP/2 engine on both ends of a
memory stream pair, the server running api_stream_handler."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from ca import CertificateAuthority, StaticAuthorizer, TokenAuthenticator
from ca.api import MAX_BODY_BYTES, CertificateApi, api_stream_handler
from mesh.hbone import H2Stream, HboneSettings, Http2Connection
from mesh.hbone.stream import StreamReset
from mesh.hbone.transport import StreamTransport
from mesh.identity import SpiffeId, build_csr, generate_key

WEB = SpiffeId("cluster.local", "default", "web")
AUTH = ("authorization", "Bearer t0ken")
REQUEST = [(":method", "POST"), (":scheme", "https"), (":authority", "ca")]
SETTINGS = HboneSettings()


def api() -> CertificateApi:
    authority = CertificateAuthority.create(intermediate=True)
    return CertificateApi(
        authority, TokenAuthenticator({"t0ken": "node-a"}), StaticAuthorizer({"node-a": {WEB}})
    )


@contextlib.asynccontextmanager
async def exchange(
    client_settings: HboneSettings = SETTINGS,
) -> AsyncIterator[tuple[Http2Connection, Http2Connection]]:
    left, right = trio.testing.memory_stream_pair()
    client = Http2Connection(
        StreamTransport(left), peer=None, settings=client_settings, client_side=True
    )
    server = Http2Connection(
        StreamTransport(right),
        peer=None,
        settings=SETTINGS,
        handler=api_stream_handler(api().handle, src="memory"),
        client_side=False,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.serve)
        nursery.start_soon(server.serve)
        yield client, server
        nursery.cancel_scope.cancel()


async def post(client: Http2Connection, body: bytes, *headers: tuple[str, str]) -> H2Stream:
    stream = client.start_request([*REQUEST, (":path", "/v1/certificates"), *headers])
    await stream.send_all(body)
    await stream.send_eof()
    return stream


async def answer(stream: H2Stream) -> tuple[int, dict[str, Any]]:
    headers = dict(await stream.wait_response())
    body = bytearray()
    while data := await stream.receive_some():
        body += data
    result: dict[str, Any] = json.loads(body)
    return int(headers[":status"]), result


async def send_until_cut(stream: H2Stream) -> None:
    """A body that never ends, until the server cuts it."""
    for _ in range(1000):
        await stream.send_all(b"x" * (MAX_BODY_BYTES // 4))
        await trio.lowlevel.checkpoint()


def csr_body() -> bytes:
    return json.dumps({"csr": build_csr(WEB, generate_key()).decode()}).encode()


async def test_signs_over_http2_in_memory() -> None:
    with trio.fail_after(10):
        async with exchange() as (client, _server):
            status, result = await answer(await post(client, csr_body(), AUTH))
    assert status == 200
    assert len(result["certificate_chain"]) == 2
    assert len(result["trust_bundle"]) == 1


async def test_several_requests_on_one_connection() -> None:
    with trio.fail_after(10):
        async with exchange() as (client, _server):
            ok = await post(client, csr_body(), AUTH)
            anonymous = await post(client, csr_body())
            (ok_status, _), (anon_status, anon) = await answer(ok), await answer(anonymous)
    assert (ok_status, anon_status) == (200, 401)
    assert anon["error"] == "unauthenticated"


async def test_response_respects_a_small_client_window() -> None:
    window = HboneSettings(stream_window=65_535)
    with trio.fail_after(10):
        async with exchange(window) as (client, _server):
            stream = await post(client, csr_body(), AUTH)
            await stream.wait_response()
            await trio.testing.wait_all_tasks_blocked()
            stats = stream.statistics()
            assert 0 < stats.buffered <= 65_535  # no more than the window allows
            status, result = await answer(stream)
    assert status == 200
    assert result["certificate_chain"]


async def test_oversized_body_gets_413_and_the_stream_is_cut_short() -> None:
    with trio.fail_after(10):
        async with exchange() as (client, server):
            stream = client.start_request([*REQUEST, (":path", "/v1/certificates"), AUTH])
            with pytest.raises(trio.BrokenResourceError) as cut:
                await send_until_cut(stream)
            assert isinstance(cut.value.__cause__, StreamReset)
            assert cut.value.__cause__.by_peer
            assert stream.status == 413
            assert not server.is_closed()  # the connection itself is fine
            status, _ = await answer(await post(client, csr_body(), AUTH))
            assert status == 200


async def test_garbage_closes_the_connection_with_a_reason() -> None:
    raw, right = trio.testing.memory_stream_pair()
    server = Http2Connection(
        StreamTransport(right),
        peer=None,
        settings=SETTINGS,
        handler=api_stream_handler(api().handle, src="memory"),
        client_side=False,
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve)
            await raw.send_all(b"GET / HTTP/1.1\r\n\r\n")
            answer = await raw.receive_some()  # the server says GOAWAY before it hangs up
            await trio.testing.wait_all_tasks_blocked()
            assert server.is_closed()
            assert server.error is not None
            assert "preface" in server.error.reason
            assert answer
