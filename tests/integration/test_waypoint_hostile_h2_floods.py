"""Floods and resource games an h2c client plays at the waypoint: PRIORITY frames, empty
DATA frames (CVE-2019-9518) and empty CONTINUATIONs without end get GOAWAY
ENHANCE_YOUR_CALM; a stream that never sends its body holds nothing but itself; streams
past the 100 we advertise are refused, the rest served; a body in 1-byte DATA frames
arrives whole. A healthy HTTP/1.1 request in flight beside each loses no byte, and
another connection is served."""

from __future__ import annotations

import json

import pytest
import trio
from h2.errors import ErrorCodes

from mesh.hbone import frames
from mesh.model import ServicePort
from tests.integration.h2_raw_support import RawH2, get, post, raw_h2
from tests.integration.hostile_support import beside_healthy
from tests.integration.recording_apps import AppKind, recording_mesh
from tests.integration.waypoint_support import Mesh, Pod, open_mesh
from tests.pki import Pki
from tests.waiting import wait_until

ENHANCE_YOUR_CALM = frames.ENHANCE_YOUR_CALM
HTTP = [ServicePort(80, 8080, name="http")]


async def served(mesh: Mesh) -> None:
    """A new connection is served."""
    async with raw_h2(mesh) as h2:
        answer = await h2.request(1, get("/fine"))
        assert answer.status == 200
        assert answer.ended


async def flood(h2: RawH2, frame: bytes, count: int) -> None:
    """Send ``count`` copies of ``frame`` in batches, until the waypoint closes."""
    batch = frame * 1000
    for _ in range(count // 1000):
        if h2.closed:
            return
        try:
            await h2.send(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


@pytest.mark.parametrize("kind", ["priority", "empty DATA", "empty CONTINUATION"])
async def test_frames_that_make_us_work_for_nothing_get_enhance_your_calm(
    root: Pki, kind: str
) -> None:
    with trio.fail_after(30):
        async with open_mesh(root, [Pod("web-0", "10.0.0.11")], ports=HTTP) as mesh:
            async with beside_healthy(mesh), raw_h2(mesh) as h2:
                if kind == "priority":  # on streams never opened, as RFC 9113 allows
                    await flood(h2, h2.priority(7, 5), 5000)
                elif kind == "empty DATA":
                    await h2.send(h2.headers(1, post("/upload")))
                    await flood(h2, h2.data(1, b""), 5000)
                else:  # a header block that never ends, without growing a byte
                    await h2.send(h2.headers(1, get("/x"), end_headers=False))
                    await flood(h2, frames.frame_header(0, frames.CONTINUATION, 0, 1), 40_000)
                await h2.wait_closed()
                assert h2.goaway == ENHANCE_YOUR_CALM
            await served(mesh)


async def test_a_few_priority_frames_are_nothing(root: Pki) -> None:
    """What browsers and curl send (a PRIORITY per stream, now and then) is far from it."""
    with trio.fail_after(30):
        async with (
            open_mesh(root, [Pod("web-0", "10.0.0.11")], ports=HTTP) as mesh,
            raw_h2(mesh) as h2,
        ):
            for sid in range(1, 400, 2):
                await h2.send(h2.priority(sid, 0), h2.priority(sid, sid + 2))
            answer = await h2.request(401, get("/fine"))
            assert answer.status == 200
            assert h2.goaway is None


@pytest.mark.parametrize("kind", ["http1", "h2c"])
async def test_a_stream_that_never_sends_its_body_holds_only_itself(
    root: Pki, kind: AppKind
) -> None:
    """A POST whose body stops after 10 bytes of 100,000: the app has the request begun,
    the connection goes on serving other streams meanwhile, and when the client gives
    up (RST_STREAM CANCEL) the app hears it."""
    with trio.fail_after(30):
        async with (
            recording_mesh(root, kind) as (mesh, app),
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            head = post("/slow", ("content-length", "100000"))
            await h2.send(h2.headers(1, head), h2.data(1, b"0123456789"))
            await wait_until(lambda: "/slow" in app.begun)
            for sid in range(3, 23, 2):
                answer = await h2.request(sid, get("/second"))
                assert answer.status == 200
            await served(mesh)
            assert "/slow" not in app.abandoned + app.whole  # still waiting, as it may
            await h2.send(h2.rst(1, ErrorCodes.CANCEL))
            await wait_until(lambda: "/slow" in app.abandoned)
        assert app.reset_codes in ([], [ErrorCodes.CANCEL])


async def test_streams_past_the_advertised_100_are_refused_and_the_rest_served(
    root: Pki,
) -> None:
    with trio.fail_after(60):
        async with (
            open_mesh(root, [Pod("web-0", "10.0.0.11")], ports=HTTP) as mesh,
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            sids = range(1, 401, 2)  # 200 streams in one write; each answers in 300 ms
            await h2.send(*(h2.headers(s, get("/delay/300"), end_stream=True) for s in sids))
            for sid in sids:
                await h2.finished(sid)
            refused = [s for s in sids if h2.answer(s).reset == ErrorCodes.REFUSED_STREAM]
            assert refused == list(sids[100:])
            for sid in sids[:100]:
                answer = h2.answer(sid)
                assert answer.status == 200
                assert json.loads(answer.body)["path"] == "/delay/300"
            # The refused ones may be sent again, and are served.
            again = await h2.request(401, get("/delay/0"))
            assert again.status == 200


@pytest.mark.parametrize("kind", ["http1", "h2c"])
async def test_a_body_in_one_byte_data_frames_arrives_whole(root: Pki, kind: AppKind) -> None:
    body = bytes(range(97, 123)) * 2521  # 65,546 bytes of a-z
    with trio.fail_after(60):
        async with (
            recording_mesh(root, kind) as (mesh, _app),
            beside_healthy(mesh),
            raw_h2(mesh) as h2,
        ):
            head = post("/healthy", ("content-length", str(len(body))))
            tiny = b"".join(h2.data(1, body[i : i + 1]) for i in range(len(body)))
            await h2.send(h2.headers(1, head), tiny, h2.data(1, b"", end_stream=True))
            answer = await h2.finished(1)
            assert answer.status == 200
            assert answer.reset is None
            assert json.loads(answer.body)["body"].encode() == body
