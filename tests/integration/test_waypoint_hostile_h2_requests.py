"""An h2c client at the waypoint sending requests that are malformed by RFC 9113 §8, frame
by frame: bad heads, bodies that disagree with their ``content-length``, bad trailers.
Each is a RST_STREAM PROTOCOL_ERROR for its own stream only: the connection serves the
next stream, the app never gets the request whole (one that had begun is abandoned at
the app), at most one line is logged besides the access log, and a healthy HTTP/1.1
request in flight beside the attack loses no byte. ``:path`` is read as HTTP/1.1's
target is, so a path policy cannot be walked around with ``..`` over HTTP/2."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from h2.errors import ErrorCodes
from structlog.testing import capture_logs

from tests.integration.h2_raw_support import Headers, RawH2, get, post, raw_h2
from tests.integration.hostile_support import beside_healthy, not_access_log
from tests.integration.recording_apps import AppKind, recording_mesh
from tests.integration.test_waypoint_l7 import POLICY, pods, world
from tests.integration.waypoint_support import open_mesh
from tests.pki import Pki
from tests.waiting import wait_until

GET = [(":method", "GET"), (":scheme", "http"), (":path", "/bad"), (":authority", "web")]
MALFORMED_HEADS: list[tuple[str, Headers]] = [
    ("an uppercase name", [*GET, ("X-Upper", "1")]),
    ("connection", [*GET, ("connection", "keep-alive")]),
    ("keep-alive", [*GET, ("keep-alive", "5")]),
    ("transfer-encoding", [*GET, ("transfer-encoding", "chunked")]),
    ("upgrade", [*GET, ("upgrade", "websocket")]),
    ("te: gzip", [*GET, ("te", "gzip")]),
    ("no :path", [p for p in GET if p[0] != ":path"]),
    ("an empty :path", [(k, "" if k == ":path" else v) for k, v in GET]),
    ("no :method", [p for p in GET if p[0] != ":method"]),
    ("no :scheme", [p for p in GET if p[0] != ":scheme"]),
    ("a pseudo-header after a regular one", [*GET[:2], ("x-a", "1"), *GET[2:]]),
    ("two :path", [*GET, (":path", "/admin")]),
    ("two :method", [*GET, (":method", "POST")]),
    (":status in a request", [*GET, (":status", "200")]),
    ("an unknown pseudo-header", [*GET, (":secret", "1")]),
    (":authority and host disagree", [*GET, ("host", "admin")]),
    ("two host fields", [*GET[:3], ("host", "web"), ("host", "admin")]),
    ("a NUL in a value", [*GET, ("x-a", "a\x00b")]),
    ("a value with a leading space", [*GET, ("x-a", " a")]),
    ("content-length not a number", [*GET, ("content-length", "abc")]),
    ("content-length a unicode digit", [*GET, ("content-length", "\u00b2")]),  # "²"
    ("two content-lengths that differ", [*GET, ("content-length", "0"), ("content-length", "9")]),
]  # fmt: skip


@pytest.fixture(params=["http1", "h2c"])
def kind(request: pytest.FixtureRequest) -> AppKind:
    kind: AppKind = request.param
    return kind


async def second_request_served(h2: RawH2, sid: int) -> None:
    answer = await h2.request(sid, get("/second"))
    assert answer.status == 200
    assert answer.ended
    assert answer.reset is None


@pytest.mark.parametrize(
    ("attack", "headers"), MALFORMED_HEADS, ids=[m[0] for m in MALFORMED_HEADS]
)
async def test_a_malformed_head_is_a_reset_of_its_stream_alone(
    root: Pki, attack: str, headers: Headers
) -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with (
            recording_mesh(root, "http1") as (mesh, app),
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            await h2.send(h2.headers(1, headers, end_stream=True))
            answer = await h2.finished(1)
            assert answer.reset == ErrorCodes.PROTOCOL_ERROR
            assert not answer.headers
            await second_request_served(h2, 3)
        assert app.begun == ["/second"]  # (and the healthy one, which raw_app echoes)
        assert len(not_access_log(logs)) <= 1, not_access_log(logs)


@pytest.mark.parametrize("end_stream", [True, False], ids=["whole", "body to come"])
async def test_a_head_over_60_kib_gets_431_on_its_stream_alone(root: Pki, end_stream: bool) -> None:
    """As over HTTP/1.1 (431 past 60 KiB of headers), and as the SETTINGS it sends say:
    the connection goes on (it was GOAWAY ENHANCE_YOUR_CALM past 64 KiB, unlogged); a
    request with a body to come is told, with RST_STREAM NO_ERROR, that it is not read.
    Just under the limit the app gets the header whole."""
    with trio.fail_after(20), capture_logs() as logs:
        async with (
            recording_mesh(root, "http1") as (mesh, app),
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            await h2.settings_acked.wait()
            assert h2.peer_settings[0x6] == 60 * 1024  # SETTINGS_MAX_HEADER_LIST_SIZE
            big = [*GET, ("x-big", "b" * 66_000)]
            await h2.send(h2.headers(1, big, end_stream=end_stream))
            answer = await h2.finished(1)
            assert answer.status == 431
            assert answer.ended
            assert answer.reset in ((None,) if end_stream else (None, ErrorCodes.NO_ERROR))
            await second_request_served(h2, 3)
            near = await h2.request(5, [*get("/near"), ("x-big", "n" * 55_000)])
            assert near.status == 200
            assert h2.goaway is None
        assert app.begun == ["/second", "/near"]
        assert not_access_log(logs) == ["h2_request_malformed"]
        line = next(e for e in logs if e["event"] == "h2_request_malformed")
        assert line["status"] == 431
        assert "over the limit of 61440" in line["reason"]


BadBody = Callable[[RawH2], list[bytes]]
# Each begins with a request head and the body's first bytes (the app gets them); then:
BAD_BODIES: list[tuple[str, Headers, BadBody]] = [
    ("more DATA than content-length", post("/lie", ("content-length", "5")),
     lambda h2: [h2.data(1, b"lo, world", end_stream=True)]),
    ("less DATA than content-length", post("/lie", ("content-length", "50")),
     lambda h2: [h2.data(1, b"lo", end_stream=True)]),
    ("trailers with a pseudo-header", post("/lie"),
     lambda h2: [h2.headers(1, [(":path", "/admin"), ("x-t", "1")], end_stream=True)]),
    ("trailers with an uppercase name", post("/lie"),
     lambda h2: [h2.headers(1, [("X-T", "1")], end_stream=True)]),
    ("trailers without END_STREAM", post("/lie"),
     lambda h2: [h2.headers(1, [("x-t", "1")])]),
]  # fmt: skip


@pytest.mark.parametrize(("attack", "head", "rest"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_a_body_that_breaks_http2_is_abandoned_at_the_app(
    root: Pki, kind: AppKind, attack: str, head: Headers, rest: BadBody
) -> None:
    """The head went to the app before the body broke HTTP/2: the app must see its
    request cut (its connection closed, its stream reset), never whole, and the
    waypoint must not wait on it for ever."""
    with trio.fail_after(20), capture_logs() as logs:
        async with (
            recording_mesh(root, kind) as (mesh, app),
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            await h2.send(h2.headers(1, head), h2.data(1, b"hel"))
            await wait_until(lambda: "/lie" in app.begun)
            await h2.send(*rest(h2))
            answer = await h2.finished(1)
            assert answer.reset == ErrorCodes.PROTOCOL_ERROR
            await wait_until(lambda: "/lie" in app.abandoned)
            await second_request_served(h2, 3)
            await mesh.requests_counted(response_flags="DC")  # the abandoned request's line
        assert "/lie" not in app.whole
        assert app.reset_codes in ([], [ErrorCodes.CANCEL])
        assert len(not_access_log(logs)) <= 1, not_access_log(logs)


async def test_a_request_reset_in_the_same_read_as_its_head_never_reaches_the_app(
    root: Pki, kind: AppKind
) -> None:
    """HEADERS and RST_STREAM in one write (what a rapid-reset client sends): the
    handler is cancelled before it dials the app."""
    with trio.fail_after(20):
        async with recording_mesh(root, kind) as (mesh, app), raw_h2(mesh) as h2:
            for sid in range(1, 41, 2):
                await h2.send(h2.headers(sid, get("/gone"), end_stream=True),
                              h2.rst(sid, ErrorCodes.CANCEL))  # fmt: skip
            await second_request_served(h2, 41)
            await trio.sleep(0.2)
        assert "/gone" not in app.begun


async def test_a_window_update_overflowing_a_stream_resets_that_stream_alone(
    root: Pki, kind: AppKind
) -> None:
    with trio.fail_after(20):
        async with (
            recording_mesh(root, kind) as (mesh, app),
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            # Our SETTINGS gave the waypoint a 2^30 window for each stream: 2^31-1 more
            # is past 2^31-1 (RFC 9113 §6.9.1).
            await h2.send(h2.headers(1, get("/overflow"), end_stream=True),
                          h2.window_update(1, 2**31 - 1))  # fmt: skip
            answer = await h2.finished(1)
            assert answer.reset == ErrorCodes.FLOW_CONTROL_ERROR
            await second_request_served(h2, 3)
            assert h2.goaway is None
        assert "/overflow" not in app.begun


async def test_a_window_update_overflowing_the_connection_is_goaway(root: Pki) -> None:
    with trio.fail_after(20):
        async with (
            recording_mesh(root, "http1") as (mesh, _app),
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            await h2.send(h2.window_update(0, 2**31 - 1))
            await h2.wait_closed()
            assert h2.goaway == ErrorCodes.FLOW_CONTROL_ERROR
            async with raw_h2(mesh) as again:  # another connection is served
                await second_request_served(again, 1)


async def test_a_path_is_normalized_before_policy_and_the_app_see_it(root: Pki) -> None:
    """The DENY policy on ``/admin/*`` (test_waypoint_l7) holds for an HTTP/2 ``:path``
    that reaches it through ``..`` or percent-encoded dots, as for HTTP/1.1."""
    with trio.fail_after(20):
        async with open_mesh(root, pods(), snapshot=world(POLICY)) as mesh, raw_h2(mesh) as h2:
            sid = 1
            for path in ("/public/../admin/users", "/public/%2e%2E/admin/users",
                         "/./admin/users", "/admin/x/../users"):  # fmt: skip
                answer = await h2.request(sid, get(path))
                assert answer.status == 403, path
                sid += 2
            answer = await h2.request(sid, get("/a/./b/../c?x=1"))
            assert answer.status == 200
            assert b'"path": "/a/c?x=1"' in answer.body  # what the app got
            for path, status in (("admin/users", 400), ("http://web/admin/users", 400),
                                 ("*", 400)):  # fmt: skip
                sid += 2
                assert (await h2.request(sid, get(path))).status == status, path
            sid += 2
            connect = [(":method", "CONNECT"), (":authority", "web:80")]
            assert (await h2.request(sid, connect)).status == 501
