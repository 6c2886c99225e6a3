"""A hostile HTTP/1.1 client at the waypoint: request smuggling, malformed heads and
bodies, odd request targets, a body that stops half-way. Each attack gets a clear answer
on its own connection and at most one log line, while a healthy request in flight on
another connection loses no byte; what reaches the app is what policy saw."""

from __future__ import annotations

import contextlib
import json

import pytest
import trio
from structlog.testing import capture_logs

from mesh.model import ServicePort
from tests.integration.hostile_support import (
    beside_healthy,
    count_responses,
    exchange,
    not_access_log,
    read_all,
    status_of,
)
from tests.integration.waypoint_support import Client, Pod, open_mesh
from tests.pki import Pki

H = b"Host: web\r\n"
# (attack, bytes sent, the status it must get); each on its own connection.
MALFORMED = [
    ("CL and TE", b"POST / HTTP/1.1\r\n" + H
     + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE and CL", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("two different CL", b"POST / HTTP/1.1\r\n" + H
     + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("CL list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("CL negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("CL overflow", b"POST / HTTP/1.1\r\n" + H
     + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("TE chunked, identity", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("TE xchunked", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("TE twice", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip, chunked", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
    ("LF-only line ends", b"GET / HTTP/1.1\nHost: web\n\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : a\r\n\r\n", 400),
    ("NUL in a value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("CR in a value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: web\r\nHost: admin\r\n\r\n", 400),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/3.0 request line", b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    ("HTTP/1.2 request line", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("asterisk-form GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("authority-form GET", b"GET web:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT through the waypoint", b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", 501),
    ("lower-case method", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
]  # fmt: skip
# A bad body is found after the head went to the app: the app must see the request end
# badly, and the client gets 400 and a closed connection.
BAD_BODIES = [
    ("chunk size overflow", b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
    ("negative chunk size", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("chunk size without CR", b"5\nhello\r\n0\r\n\r\n"),
    ("chunk longer than its size", b"2\r\nhello\r\n0\r\n\r\n"),
]


HTTP = [ServicePort(80, 8080, name="http")]  # declared: what is not HTTP is refused


def pods() -> list[Pod]:
    return [Pod("web-0", "10.0.0.11")]


@pytest.mark.parametrize(("attack", "data", "status"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_malformed_head_gets_its_status_and_one_log_line(
    root: Pki, attack: str, data: bytes, status: int
) -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with open_mesh(root, pods(), ports=HTTP) as mesh, beside_healthy(mesh):
            # A second request pipelined after the bad one must not be served.
            answer = await exchange(mesh, data + b"GET /second HTTP/1.1\r\n" + H + b"\r\n")
            assert status_of(answer) == status, answer[:200]
            assert count_responses(answer) == 1
            assert b"connection: close" in answer.lower()
            # Counted and logged as Envoy counts its codec errors, for the dashboards.
            code = str(status)
            await mesh.requests_counted(response_code=code, response_flags="DPE")
            assert mesh.metric("istio_requests_total", reporter="waypoint",
                               destination_service_name="web", response_code=code) == 1  # fmt: skip
        assert mesh.pods[0].seen == [("POST", "/healthy", "web")]  # nothing else reached it
        assert len(not_access_log(logs)) <= 1, not_access_log(logs)
        refused = [e for e in logs if e["event"] == "request" and e["response_flags"] == "DPE"]
        assert [(e["response_code"], e["path"]) for e in refused] == [(status, "-")]


@pytest.mark.parametrize(("attack", "body"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_a_malformed_chunked_body_is_400_and_never_complete_upstream(
    root: Pki, attack: str, body: bytes
) -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with open_mesh(root, pods()) as mesh, beside_healthy(mesh):
            head = b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
            answer = await exchange(mesh, head + body)
            assert status_of(answer) == 400, answer[:200]
            assert count_responses(answer) == 1
        # The app saw the request begin, never end: it answered nothing for it.
        assert ("POST", "/upload", "web") not in mesh.pods[0].seen
        assert len(not_access_log(logs)) <= 1, not_access_log(logs)


async def test_a_client_gone_half_way_through_its_body_is_no_request_upstream(
    root: Pki,
) -> None:
    """It is gone, not malformed: nobody is answered, and its access line says ``0 DC``
    (a downstream disconnect, as Envoy logs it), not a 400 it never got."""
    with trio.fail_after(20), capture_logs() as logs:
        async with open_mesh(root, pods()) as mesh, beside_healthy(mesh):
            for head in (b"Content-Length: 1000\r\n", b"Transfer-Encoding: chunked\r\n"):
                stream = await mesh.connect()
                await stream.send_all(b"POST /cut HTTP/1.1\r\n" + H + head + b"\r\n")
                await stream.send_all(b"10\r\n0123456789abcdef\r\n" if b"chunked" in head
                                      else b"x" * 100)  # fmt: skip
                await stream.send_eof()  # and nothing more
                answer = await read_all(stream)
                await stream.aclose()
                assert count_responses(answer) == 0
            await trio.sleep(0.2)
        assert ("POST", "/cut", "web") not in mesh.pods[0].seen
        cut = [e for e in logs if e["event"] == "request" and e.get("path") == "/cut"]
        assert [(e["response_code"], e["response_flags"]) for e in cut] == [(0, "DC")] * 2
        assert "http_request_malformed" not in not_access_log(logs)


async def test_an_absolute_form_target_is_routed_and_checked_as_its_path(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods()) as mesh:
            client = Client(await mesh.connect())
            status, _h, body = await client.request("GET", "http://admin.example/a/../items?x=1")
            assert status == 200
            seen = json.loads(body)
            # What the app gets is what policy and routes saw: origin-form, normalized,
            # and the host of the target (RFC 9112 §3.2.2), not the Host header.
            assert seen["path"] == "/items?x=1"
            assert seen["headers"]["host"] == "admin.example"
            status, _h, body = await client.request("GET", "/a/./b/%2E%2E/c/%7Euser")
            assert status == 200
            assert json.loads(body)["path"] == "/a/c/~user"
            status, _h, body = await client.request("OPTIONS", "*")
            assert status == 200
            assert json.loads(body)["path"] == "*"
            await client.stream.aclose()


async def test_trailers_of_a_chunked_request_do_not_become_headers(root: Pki) -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with open_mesh(root, pods()) as mesh:
            answer = await exchange(
                mesh,
                b"POST /t HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\nHost: evil\r\n"
                b"X-Request-Id: forged\r\n\r\n",
            )  # fmt: skip
            assert status_of(answer) == 200
        access = [e for e in logs if e["event"] == "request"]
        assert access[0]["authority"] == "web"
        assert access[0]["request_id"] != "forged"


async def test_an_h2c_upgrade_is_ignored_and_the_connection_goes_on(root: Pki) -> None:
    """curl --http2 on http:// asks ``Upgrade: h2c``: the waypoint answers in HTTP/1.1
    (as Envoy does) and never hands the connection to the app as bytes."""
    with trio.fail_after(20):
        async with open_mesh(root, pods()) as mesh:
            upgrade = (
                b"GET /first HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            second = b"GET /second HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
            answer = await exchange(mesh, upgrade + second)
            assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
            assert b'"path": "/second"' in answer
            assert b'"upgrade"' not in answer  # the app never heard of it
            assert b"http2-settings" not in answer


async def test_http10_without_host_is_served_on_the_connect_authority(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, pods()) as mesh:
            answer = await exchange(mesh, b"GET /old HTTP/1.0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.0 200 ")
            assert b'"path": "/old"' in answer


async def test_a_slow_head_is_cut_after_its_deadline(
    root: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slowloris: a head sent a line at a time never ends; once the head deadline has
    passed the waypoint answers 408 and closes (the idle timeout is for between requests)."""
    monkeypatch.setattr("waypoint.http1.HEAD_SECONDS", 0.5, raising=False)
    with trio.fail_after(20):
        async with open_mesh(root, pods()) as mesh, beside_healthy(mesh):
            stream = await mesh.connect()
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
                for _ in range(100):
                    await stream.send_all(b"X-A: b\r\n")
                    await trio.sleep(0.05)
            answer = await read_all(stream)
            assert status_of(answer) == 408
            await stream.aclose()
