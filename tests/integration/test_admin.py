"""The management-port HTTP server, on a real loopback socket with real clients."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import pytest
import trio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from mesh.admin import (
    Limits,
    Route,
    json_response,
    metrics_route,
    ready_route,
    serve_http,
)
from mesh.http import Request, Response
from mesh.metrics import TcpLabels, TcpMetrics
from mesh.net import open_listener

Logs = list[MutableMapping[str, Any]]
Address = tuple[str, int]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def events(logs: Logs, name: str) -> Logs:
    return [entry for entry in logs if entry["event"] == name]


def echo(request: Request) -> Response:
    return json_response({"method": request.method, "path": request.path, "query": request.query})


async def async_hello(_request: Request) -> Response:
    await trio.lowlevel.checkpoint()  # an async route
    return Response(200, b"hello\n")


def boom(_request: Request) -> Response:
    raise RuntimeError("route bug")


ROUTES: dict[str, Route] = {"/echo": echo, "/hello": async_hello, "/boom": boom}


@asynccontextmanager
async def serving(
    routes: Mapping[str, Route] = ROUTES, limits: Limits | None = None
) -> AsyncIterator[Address]:
    async with trio.open_nursery() as nursery:
        start = partial(serve_http, routes, host="127.0.0.1", port=0, limits=limits)
        yield await nursery.start(start)
        nursery.cancel_scope.cancel()


class Client:
    """A kept-alive HTTP/1.1 connection, parsed with h11's client side."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, address: Address) -> Client:
        return cls(await trio.open_tcp_stream(*address))

    async def request(
        self, target: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()
    ) -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        head = h11.Request(method=method, target=target, headers=[("host", "test"), *headers])
        await self.stream.send_all(
            (self.conn.send(head) or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        )
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some())
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, body


def header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


async def raw_exchange(address: Address, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(data)
        return await read_until_closed(stream)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some():
        received += chunk
    return received


async def curl(*args: str) -> str:
    assert shutil.which("curl"), "curl is needed for this test"
    result = await trio.run_process(
        ["curl", "-sS", "--noproxy", "*", "--max-time", "5", "-D", "-", *args],
        capture_stdout=True,
    )
    return result.stdout.decode()


async def test_curl_gets_json_with_query() -> None:
    with trio.fail_after(10):
        async with serving() as (host, port):
            out = await curl(f"http://{host}:{port}/echo?a=1&b=two%20words")
    head, body = out.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200 OK")
    assert "content-type: application/json" in head.lower()
    assert json.loads(body) == {
        "method": "GET",
        "path": "/echo",
        "query": {"a": "1", "b": "two words"},
    }


async def test_curl_scrapes_metrics_and_readiness() -> None:
    registry = CollectorRegistry()
    TcpMetrics(registry).series(TcpLabels("destination")).opened.inc()
    ready = [False]
    routes = {
        "/metrics": metrics_route(registry),
        "/healthz/ready": ready_route(lambda: (ready[0], "no config from the control plane yet")),
    }
    with trio.fail_after(10):
        async with serving(routes) as (host, port):
            metrics = await curl(f"http://{host}:{port}/metrics")
            not_ready = await curl(f"http://{host}:{port}/healthz/ready")
            ready[0] = True
            is_ready = await curl(f"http://{host}:{port}/healthz/ready")
    assert "content-type: text/plain; version=" in metrics.lower()
    assert "\nistio_tcp_connections_opened_total{" in metrics
    assert 'reporter="destination"' in metrics
    assert not_ready.startswith("HTTP/1.1 503")
    assert not_ready.endswith("\r\n\r\nno config from the control plane yet\n")
    assert is_ready.startswith("HTTP/1.1 200")
    assert is_ready.endswith("\r\n\r\nready\n")


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with trio.fail_after(10):
        async with serving() as address:
            client = await Client.connect(address)
            async with client.stream:
                first, _ = await client.request("/hello")
                second, body = await client.request("/echo?x=y")
    assert (first.status_code, second.status_code) == (200, 200)
    assert header(first, b"connection") is None
    assert json.loads(body)["query"] == {"x": "y"}


async def test_unknown_path_is_404_listing_known_paths() -> None:
    with trio.fail_after(10):
        async with serving() as address:
            client = await Client.connect(address)
            async with client.stream:
                response, body = await client.request("/nope")
    assert response.status_code == 404
    assert body.decode() == "no route for /nope; known paths:\n  /boom\n  /echo\n  /hello\n"


async def test_other_methods_are_405_and_the_connection_stays_usable() -> None:
    with trio.fail_after(10):
        async with serving() as address:
            client = await Client.connect(address)
            async with client.stream:
                refused, _ = await client.request("/echo", method="POST")
                after, _ = await client.request("/hello")
    assert refused.status_code == 405
    assert header(refused, b"allow") == b"GET, HEAD"
    assert after.status_code == 200


async def test_head_sends_headers_without_body() -> None:
    with trio.fail_after(10):
        async with serving() as address:
            client = await Client.connect(address)
            async with client.stream:
                head, head_body = await client.request("/hello", method="HEAD")
                # a stray body would corrupt the next response on this connection
                get, get_body = await client.request("/hello")
    assert head.status_code == 200
    assert head_body == b""
    assert header(head, b"content-length") == str(len(get_body)).encode() == b"6"
    assert get.status_code == 200


async def test_raising_route_is_500_with_logged_traceback(logs: Logs) -> None:
    with trio.fail_after(10):
        async with serving() as address:
            client = await Client.connect(address)
            async with client.stream:
                failed, body = await client.request("/boom")
                after, _ = await client.request("/hello")
    assert failed.status_code == 500
    assert b"route bug" not in body  # details go to the log, not to the client
    [entry] = events(logs, "admin_route_failed")
    assert entry["path"] == "/boom"
    assert entry["exc_info"] is True
    assert after.status_code == 200


async def test_garbage_gets_400_and_others_keep_being_served(logs: Logs) -> None:
    with trio.fail_after(10):
        async with serving() as address:
            client = await Client.connect(address)
            async with client.stream:
                before, _ = await client.request("/hello")
                answer = await raw_exchange(address, b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
                after, _ = await client.request("/hello")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in answer
    assert (before.status_code, after.status_code) == (200, 200)
    [entry] = events(logs, "admin_bad_request")
    assert entry["status"] == 400


async def test_slow_client_gets_408_while_others_are_served(logs: Logs) -> None:
    limits = Limits(request_timeout=1.0)
    with trio.fail_after(10):
        async with serving(limits=limits) as address:
            slow = await trio.open_tcp_stream(*address)
            async with slow:
                await slow.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # never finished
                client = await Client.connect(address)
                async with client.stream:
                    response, _ = await client.request("/hello")
                    assert response.status_code == 200
                    assert not events(logs, "admin_bad_request")
                answer = await read_until_closed(slow)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    [entry] = events(logs, "admin_bad_request")
    assert entry["status"] == 408


@pytest.mark.parametrize("end", [b"\r\n\r\n", b""], ids=["whole", "unfinished"])
async def test_header_block_is_bounded(logs: Logs, end: bytes) -> None:
    limits = Limits(max_header_bytes=2048)
    big = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + end
    with trio.fail_after(10):
        async with serving(limits=limits) as address:
            answer = await raw_exchange(address, big)
            client = await Client.connect(address)
            async with client.stream:
                ok, _ = await client.request("/hello", headers=(("x-small", "a" * 512),))
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert ok.status_code == 200
    assert [e["status"] for e in events(logs, "admin_bad_request")] == [431]


async def test_body_is_bounded() -> None:
    limits = Limits(max_body_bytes=100)
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    with trio.fail_after(10):
        async with serving(limits=limits) as address:
            answer = await raw_exchange(address, request)
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_idle_connection_is_closed_quietly(logs: Logs) -> None:
    limits = Limits(idle_timeout=0.2)
    with trio.fail_after(10):
        async with serving(limits=limits) as address:
            probe = await trio.open_tcp_stream(*address)  # connects, says nothing, leaves
            async with probe:
                await probe.send_eof()
                assert await read_until_closed(probe) == b""
            client = await Client.connect(address)
            async with client.stream:
                response, _ = await client.request("/hello")
                assert await read_until_closed(client.stream) == b""
    assert response.status_code == 200
    assert not events(logs, "admin_bad_request")


async def test_connection_close_is_honoured() -> None:
    with trio.fail_after(10):
        async with serving() as address:
            client = await Client.connect(address)
            async with client.stream:
                response, _ = await client.request("/hello", headers=(("connection", "close"),))
                assert await read_until_closed(client.stream) == b""
    assert response.status_code == 200


async def test_serves_a_listener_made_elsewhere() -> None:
    sock = await open_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            start = partial(serve_http, ROUTES, host="ignored", port=0, listener=sock)
            assert await nursery.start(start) == ("127.0.0.1", port)
            client = await Client.connect(("127.0.0.1", port))
            async with client.stream:
                response, _ = await client.request("/hello")
            nursery.cancel_scope.cancel()
    assert response.status_code == 200
    assert sock.fileno() == -1  # closed with the server


async def test_readiness_answers_with_200_idle_keep_alives_open(logs: Logs) -> None:
    """200 kept-alive connections, idle after a request each (a kubelet's or a scraper's),
    fill the 64-connection cap three times over; a new probe still gets its answer at once,
    because the oldest idle connection makes room."""
    routes = {"/healthz/ready": ready_route(lambda: (True, "ok"))}
    clients: list[Client] = []
    with trio.fail_after(30):
        async with serving(routes) as address:
            try:
                for _ in range(200):
                    client = await Client.connect(address)
                    clients.append(client)
                    response, _ = await client.request("/healthz/ready")
                    assert response.status_code == 200
                with trio.fail_after(1.0):
                    probe = await Client.connect(address)
                    async with probe.stream:
                        response, body = await probe.request("/healthz/ready")
                assert (response.status_code, body) == (200, b"ready\n")
            finally:
                for client in clients:
                    await client.stream.aclose()
    closed = [e for e in logs if e["event"] == "admin_idle_connection_closed"]
    assert len(closed) >= 200 - 64  # the oldest made room, one per newcomer at the cap
    assert not [e for e in logs if e["event"] == "connection_failed"]


async def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503() -> None:
    release = trio.Event()

    async def slow(_request: Request) -> Response:
        await release.wait()
        return Response(200, b"done\n")

    with trio.fail_after(20):
        async with serving({"/slow": slow}, Limits(max_connections=2)) as address:
            async with trio.open_nursery() as nursery:
                busy = [await Client.connect(address) for _ in range(2)]
                for client in busy:
                    nursery.start_soon(client.request, "/slow")
                await trio.testing.wait_all_tasks_blocked()
                answer = await raw_exchange(address, b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 503 ")
                assert answer.endswith(b"too many connections\n")
                release.set()
            for client in busy:
                await client.stream.aclose()
